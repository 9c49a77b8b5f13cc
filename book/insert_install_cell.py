"""Write the "install the project when it is missing" cell as each notebook's first code cell.

    python book/insert_install_cell.py notebooks/*.ipynb            # insert where it is missing
    python book/insert_install_cell.py --update notebooks/*.ipynb   # also rewrite an existing one
    python book/insert_install_cell.py --update --repo-url https://github.com/<owner>/<name> notebooks/*.ipynb

Reads each notebook from disk, inserts one cell before its first code cell (or, with --update,
replaces the source of the install cell it has, keeping its id), writes it back at once; no other
cell is touched. The cell says what works where; its REPO_URL is "" (unknown) unless --repo-url
names the public repository, which must then be the Makefile's REPO_URL (book/build.py checks).
"""

import argparse
import json
import uuid
from pathlib import Path

MARKER = "# Install the project when it is missing"
TEMPLATE = '''{marker}; where it is installed (`make lab`, Binder) this does nothing.
# Where this runs: locally with `make lab`, every cell on a CPU. Binder builds the repository from
# environment.yml (untested). Colab (Python 3.12/3.13) installs it with pip against the torch it has
# (pyproject.toml's ranges; untested on Colab itself).
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

REPO_URL = "{repo_url}"  # the public repository ("" while unknown): the Makefile's REPO_URL
if importlib.util.find_spec("sftlib") is None:
    if not (3, 11) <= sys.version_info[:2] <= (3, 13):
        raise SystemExit(f"sftlib needs Python 3.11 to 3.13 (pyproject.toml); this is {{sys.version.split()[0]}}")
    repo = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "sftlib" / "__init__.py").exists()), None)
    if repo is None:  # a notebook opened on its own: fetch the repository next to it
        if not REPO_URL:
            raise SystemExit("sftlib is not installed and no checkout is around this notebook: "
                             "clone the repository and run `make lab`")
        repo = Path("sft-tutorial").resolve()
        if not repo.exists():
            subprocess.run(["git", "clone", "--depth", "1", REPO_URL, str(repo)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-e", str(repo)], check=True)
    sys.path.insert(0, str(repo))
    importlib.invalidate_caches()'''


def source(repo_url: str = "") -> str:
    return TEMPLATE.format(marker=MARKER, repo_url=repo_url)


def insert(path: Path, update: bool = False, repo_url: str = "") -> str:
    """"inserted", "updated" or "already there"."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = nb["cells"]
    lines = source(repo_url).splitlines(keepends=True)
    have = next((c for c in cells if c["cell_type"] == "code" and "".join(c["source"]).startswith(MARKER)), None)
    if have is not None:
        if not update or "".join(have["source"]) == "".join(lines):
            return "already there"
        have["source"] = lines
        result = "updated"
    else:
        first = next(i for i, c in enumerate(cells) if c["cell_type"] == "code")
        cells.insert(first, {"cell_type": "code", "execution_count": None, "id": uuid.uuid4().hex[:8],
                             "metadata": {}, "outputs": [], "source": lines})
        result = "inserted"
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("notebooks", nargs="+", type=Path)
    p.add_argument("--update", action="store_true", help="rewrite an existing install cell to the current text")
    p.add_argument("--repo-url", default="", help="the public repository's URL (default: unknown)")
    args = p.parse_args()
    for nb in args.notebooks:
        print(nb, insert(nb, args.update, args.repo_url.rstrip("/")))
