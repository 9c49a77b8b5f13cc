"""Insert the "install the project when it is missing" cell as each notebook's first code cell.

    python book/insert_install_cell.py notebooks/*.ipynb

Reads each notebook from disk, inserts one cell before its first code cell, writes it back at once;
no other cell is touched. Skips notebooks that already have it (the marker line below).
"""

import json
import sys
import uuid
from pathlib import Path

MARKER = "# Install the project when it is missing"
SOURCE = f'''{MARKER} (Colab, a fresh Binder); where it is installed this does nothing.
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

REPO_URL = "https://github.com/OWNER/REPO"  # the public repository: keep equal to the Makefile's REPO_URL
if importlib.util.find_spec("sftlib") is None:
    repo = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "sftlib" / "__init__.py").exists()), None)
    if repo is None:  # a notebook opened on its own (Colab): fetch the repository next to it
        repo = Path("sft-tutorial").resolve()
        if not repo.exists():
            subprocess.run(["git", "clone", "--depth", "1", REPO_URL, str(repo)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-e", str(repo)], check=True)
    sys.path.insert(0, str(repo))
    importlib.invalidate_caches()'''


def insert(path: Path) -> bool:
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = nb["cells"]
    if any(c["cell_type"] == "code" and "".join(c["source"]).startswith(MARKER) for c in cells):
        return False
    first = next(i for i, c in enumerate(cells) if c["cell_type"] == "code")
    lines = SOURCE.splitlines(keepends=True)
    cell = {"cell_type": "code", "execution_count": None, "id": uuid.uuid4().hex[:8], "metadata": {},
            "outputs": [], "source": lines}
    cells.insert(first, cell)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return True


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(arg, "inserted" if insert(Path(arg)) else "already there")
