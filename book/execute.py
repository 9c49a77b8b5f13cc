"""Execute notebooks one after another and keep the executed copies (what `make notebooks` runs).

    python book/execute.py notebooks [--out outputs/executed] [--timeout 600]

Each notebook runs in its own folder with a fresh python3 kernel (as nbmake does), at most
`--timeout` seconds per cell. The executed copy is written to `--out/<name>.ipynb` (whole, through a
temporary file), including a failed run's partial outputs, so the site shows exactly what ran. The
exit status is 1 when any cell raised; every notebook is still run, and each failure is named.
"""

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def execute(path: Path, out_dir: Path, timeout: int) -> str | None:
    """Run one notebook; write its executed copy; return None, or a one-line reason it failed."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    error = None
    try:
        client.execute()
    except CellTimeoutError as e:
        error = f"a cell ran past {timeout} s: {str(e).splitlines()[0]}"
    except CellExecutionError as e:
        cell = next((i for i, c in enumerate(nb.cells) if any(o.get("output_type") == "error"
                                                                for o in c.get("outputs", []))), "?")
        lines = [line for line in ANSI.sub("", e.evalue).splitlines() if line.strip()] or [""]
        said = lines[0][:200] + (f" ... {lines[-1][:200]}" if len(lines) > 1 else "")  # first and last line
        error = f"cell {cell} raised {ANSI.sub('', e.ename)}: {said}".rstrip(": ")
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{path.stem}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        nbformat.write(nb, f)
    os.replace(tmp, out_dir / path.name)
    return error


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", type=Path, help="notebooks, or folders of notebooks")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "executed")
    p.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = p.parse_args(argv)
    notebooks = [nb for x in args.paths for nb in (sorted(x.glob("*.ipynb")) if x.is_dir() else [x])]
    failed = []
    for nb in notebooks:
        start = time.perf_counter()
        error = execute(nb.resolve(), args.out, args.timeout)
        print(f"{nb}: {'FAILED' if error else 'ok'} in {time.perf_counter() - start:.0f} s"
              + (f": {error}" if error else ""), flush=True)
        if error:
            failed.append(nb.name)
    print(f"{len(notebooks) - len(failed)} of {len(notebooks)} notebooks ran; executed copies in {args.out}")
    return 1 if failed or not notebooks else 0


if __name__ == "__main__":
    sys.exit(main())
