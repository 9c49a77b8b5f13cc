"""Fail when a notebook carries outputs, execution counts or a kernelspec other than python3."""

import json
import sys
from pathlib import Path


def problems(path: Path) -> list[str]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") == "code" and (cell.get("outputs") or cell.get("execution_count")):
            out.append(f"{path}: cell {i} carries outputs; strip them (jupyter nbconvert --clear-output)")
    if nb.get("metadata", {}).get("kernelspec", {}).get("name", "python3") != "python3":
        out.append(f"{path}: kernelspec must be python3")
    return out


if __name__ == "__main__":
    found = [p for arg in sys.argv[1:] for nb in sorted(Path(arg).glob("*.ipynb")) for p in problems(nb)]
    print("\n".join(found) or "notebooks are stripped")
    sys.exit(1 if found else 0)
