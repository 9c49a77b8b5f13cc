"""The output gate: what a reader must never meet in an executed notebook's outputs.

    python book/gate.py outputs/executed            # every executed notebook in the folder
    python book/gate.py outputs/executed/03_*.ipynb # or some of them

`book/build.py` runs it over outputs/executed/ before rendering and refuses to build the site when
any notebook fails. Each failure is one line: notebook, cell index (0-based, as in the file), rule,
and the offending line. Exit status 1 when anything fails.

The rules, over every code cell's outputs (text as the site shows it: the HTML page turns each
carriage return into a line break, so a tqdm bar's every redraw is a line of its own):

- compiler: compiler or linker text (`/usr/bin/ld`, `collect2`, `cannot find -lNAME`,
  `undefined reference to`).
- path: an absolute path of the machine that ran it: `/tmp/`, `/work/`, `/root/`, `/home/`,
  `site-packages`, the repository's absolute path, `sys.prefix`, `$HOME`, the temporary folder.
- widget: a Jupyter widget output (tqdm.auto's bar, `interact`): a static page shows it frozen,
  a progress bar at 0%.
- progress: a text progress bar (`NN%|`) below 100%.
- length: more than 40 lines of text in one cell's outputs (stream text, and text/plain when the
  output has no richer form: html, markdown, latex, an image).
- traceback: an error output, or "Traceback (most recent call last)" in any text.
- repr: a numpy scalar repr (`np.float64(0.25)`), an ipywidgets repr (`HBox(children=...)`).
- warning: a Python warning line (`UserWarning: ...`, `FutureWarning: ...`, any `...Warning: `).

One allowance, written out: `/tmp/data_files/`, DeepSpeed-Chat's default `--data_output_path`,
which the argument table of notebook 05 prints as a default value (`NOT_MACHINE_PATHS`).
"""

import html
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 40
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LINE_BREAK = re.compile(r"\r\n|\r|\n")
TAG = re.compile(r"<[^>]+>")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
RICH_MIMES = ("text/html", "text/markdown", "text/latex", "image/")
COMPILER = re.compile(r"/usr/bin/ld\b|\bcollect2\b|cannot find -l\S+|undefined reference to\b")
BAR = re.compile(r"(?<![\d.])(\d{1,3})%\|")
TRACEBACK = "Traceback (most recent call last)"
REPR = re.compile(r"\b(?:np|numpy)\.(?:float|int|uint|complex|bool|str|bytes|longdouble|clongdouble)\w*\("
                  r"|\b(?:HBox|VBox|GridBox|Box)\(children=|\b(?:FloatProgress|IntProgress|Output|Layout)\(")
WARNING = re.compile(r"\b[A-Z][A-Za-z]*Warning: ")


@dataclass(frozen=True)
class Failure:
    notebook: str
    cell: int
    rule: str
    line: str

    def __str__(self) -> str:
        line = self.line.strip()
        return f"{self.notebook}: cell {self.cell}: {self.rule}: {line[:200]}{'...' if len(line) > 200 else ''}"


# Strings that look like this machine's paths but are values from DeepSpeed-Chat's code.
NOT_MACHINE_PATHS = ("/tmp/data_files/",)  # main.py's default --data_output_path


def machine_paths() -> list[str]:
    """Absolute folders of this machine that must not appear in outputs (beyond the fixed prefixes)."""
    found = {str(ROOT), sys.prefix, sys.base_prefix, tempfile.gettempdir(), os.path.expanduser("~")}
    system = ("/", ".", "/usr", "/usr/local")  # a system Python's prefix (Debian's /usr) says nothing of this machine
    return sorted((p.rstrip("/") + "/" for p in found if p and p not in system), key=len, reverse=True)


def path_pattern(extra: list[str]) -> re.Pattern:
    """`/tmp/` and friends as absolute paths only: not preceded by a word character, `.` or `-`
    (so `outputs/tmp/x` and `https://example.org/home/` pass), plus `site-packages` anywhere."""
    fixed = ["/tmp/", "/work/", "/root/", "/home/"] + extra
    alternatives = "|".join(re.escape(p) for p in dict.fromkeys(fixed))
    return re.compile(rf"(?<![\w.~-])(?:{alternatives})|site-packages")


def _without_defaults(line: str) -> str:
    """The line without those values where they stand whole (not as the start of a longer path)."""
    for value in NOT_MACHINE_PATHS:
        line = re.sub(re.escape(value) + r"""(?=[\s'",)\]]|$)""", "", line)
    return line


def text_of(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def output_texts(output: dict) -> list[tuple[str, str, bool]]:
    """(mime, text, counted) of one output: counted is True for the text the 40-line rule counts."""
    kind = output.get("output_type")
    if kind == "stream":
        return [("stream", text_of(output.get("text", "")), True)]
    if kind == "error":
        return [("error", "\n".join(output.get("traceback") or [f"{output.get('ename')}: {output.get('evalue')}"]),
                 False)]
    data = output.get("data", {})
    rich = any(m.startswith(RICH_MIMES) for m in data)
    texts = []
    for mime, value in data.items():
        if mime.startswith("text/") and mime != "text/html":
            texts.append((mime, text_of(value), mime == "text/plain" and not rich))
        elif mime == "text/html":
            texts.append((mime, html.unescape(TAG.sub("", text_of(value))), False))
        elif mime == "application/json" or mime.endswith("+json"):
            texts.append((mime, json.dumps(value), False))
    return texts


def lines_of(text: str) -> list[str]:
    """The lines a reader sees on the site: ANSI colours dropped, every \\r a line break."""
    return LINE_BREAK.split(ANSI.sub("", text).rstrip("\r\n"))


def check_cell(name: str, index: int, cell: dict, paths: re.Pattern) -> list[Failure]:
    failures = []
    counted = []
    outputs = cell.get("outputs", [])
    for output in outputs:
        if output.get("output_type") == "error":
            failures.append(Failure(name, index, "traceback",
                                    f"error output {output.get('ename')}: {text_of(output.get('evalue', ''))}"))
        if WIDGET_MIME in output.get("data", {}):  # its text/plain is the widget's fallback: not checked again
            fallback = lines_of(text_of(output["data"].get("text/plain", "")))[0]
            failures.append(Failure(name, index, "widget", f"a Jupyter widget output (frozen on a static page): "
                                                             f"{fallback}"))
            continue
        for mime, text, count in output_texts(output):
            lines = lines_of(text)
            if count:
                counted += lines
            if mime == "error":
                continue
            for line in lines:
                if COMPILER.search(line):
                    failures.append(Failure(name, index, "compiler", line))
                if paths.search(_without_defaults(line)):
                    failures.append(Failure(name, index, "path", line))
                bars = [int(m.group(1)) for m in BAR.finditer(line)]
                if any(b < 100 for b in bars):
                    failures.append(Failure(name, index, "progress", line))
                if TRACEBACK in line:
                    failures.append(Failure(name, index, "traceback", line))
                if REPR.search(line):
                    failures.append(Failure(name, index, "repr", line))
                if WARNING.search(line):
                    failures.append(Failure(name, index, "warning", line))
    if len(counted) > MAX_LINES:
        failures.append(Failure(name, index, "length",
                                f"{len(counted)} lines of text output (at most {MAX_LINES}); line {MAX_LINES + 1}: "
                                f"{counted[MAX_LINES].strip()}"))
    return failures


def check_notebook(path: Path, nb: dict | None = None) -> list[Failure]:
    """Every failure in one executed notebook, in cell order."""
    nb = nb if nb is not None else json.loads(Path(path).read_text(encoding="utf-8"))
    paths = path_pattern(machine_paths())
    name = Path(path).name
    return [f for i, cell in enumerate(nb.get("cells", [])) if cell.get("cell_type") == "code"
            for f in check_cell(name, i, cell, paths)]


def notebooks_in(args: list[str | Path]) -> list[Path]:
    found = []
    for arg in map(Path, args):
        found += sorted(arg.glob("*.ipynb")) if arg.is_dir() else [arg]
    return found


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or any(a.startswith("-") for a in args):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    notebooks = notebooks_in(args)
    if not notebooks:
        print(f"error: no notebooks in {' '.join(args)}", file=sys.stderr)
        return 2
    total = 0
    for path in notebooks:
        failures = check_notebook(path)
        total += len(failures)
        for f in failures:
            print(f)
        print(f"{path.name}: {'ok' if not failures else f'{len(failures)} failure(s)'}", file=sys.stderr)
    print(f"output gate: {total} failure(s) in {len(notebooks)} notebook(s)", file=sys.stderr)
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
