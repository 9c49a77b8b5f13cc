"""The claims check: a number in a notebook's prose that reports an output must be what the output shows.

    python book/claims.py outputs/executed              # every executed notebook in the folder
    python book/claims.py outputs/executed/03_*.ipynb   # or some of them (data-nb looks beside them)

A claim is a number in a markdown cell written inside a span (it renders as plain text on the
site, in Jupyter and in Colab):

    full fine-tuning scores <span class="claim">94.2%</span> exact match
    about <span class="claim" data-nb="01">76</span> of the 384 rows   (checked against notebook 01)

The claim's number is the first number in the span: thousands commas allowed (`95,872`), a `%` or
`x` suffix allowed, scientific notation allowed (`5.7e-06`). It matches when some number printed in
that notebook's outputs (stream text, text/plain, text/markdown, text/html with tags stripped)
rounds to it at the precision the claim is written with: `94%` matches a printed `94.2` (within
0.5), `94.2%` matches `94.23`, `5.7e-06` matches `5.66e-06` (within 0.05e-06). A `%` claim also
matches a printed fraction (`94%` matches `0.942`). `data-nb="NN"` checks against the outputs of
the executed notebook whose file name starts with `NN_`, in the same folder. A claim of 0 means
zero: it matches only a printed zero (not a printed `5.7e-06`, which rounds to 0).

`book/build.py` runs it over outputs/executed/ and refuses to build the site when a claim matches
nothing; it reports how many claims each notebook has. Exit status 1 when any claim fails.
"""

import html
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

SPAN = re.compile(r"<span\s+([^>]*?)\s*>(.*?)</span>", re.S | re.I)
ATTR = re.compile(r"""([\w-]+)\s*=\s*("[^"]*"|'[^']*')""")
TAG = re.compile(r"<[^>]+>")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# A sign only where it cannot be a hyphen or a range dash ("2.1-2.4x", "opt-1.3b").
NUMBER = re.compile(r"(?:(?<![\w.])[-+\u2212])?"
                    r"(?<![\w.])(?:\d{1,3}(?:,\d{3})+(?![\d,]\d)|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?")
CLAIM_NUMBER = re.compile(r"(?P<sign>[-+\u2212])?(?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)?(?:\.(?P<frac>\d+))?"
                          r"(?:[eE](?P<exp>[-+]?\d+))?(?P<suffix>\s?%|x|\u00d7)?")
TEXT_MIMES = ("text/plain", "text/markdown", "text/html")


@dataclass(frozen=True)
class Claim:
    notebook: str  # the notebook the claim is written in
    cell: int
    text: str  # the span's text
    value: float | None  # None: the span has no number
    tolerance: float
    percent: bool
    against: str | None  # data-nb, or None for the notebook itself

    @property
    def written(self) -> str:
        return " ".join(self.text.split())


@dataclass(frozen=True)
class Failure:
    claim: Claim
    reason: str

    def __str__(self) -> str:
        c = self.claim
        return f"{c.notebook}: cell {c.cell}: claim {c.written!r}: {self.reason}"


def parse_number(text: str) -> tuple[float, float, bool] | None:
    """(value, tolerance, percent) of the first number in a claim's text, or None."""
    for m in CLAIM_NUMBER.finditer(text):
        if not (m.group("int") or m.group("frac")):
            continue
        start = m.start("int") if m.group("int") else m.start() + (1 if m.group("sign") else 0)
        if start > 0 and (text[start - 1].isalnum() or text[start - 1] == "."):
            continue  # inside a word such as "opt-1.3b" or "nb01"
        digits = (m.group("int") or "0").replace(",", "") + "." + (m.group("frac") or "0")
        exp = int(m.group("exp") or 0)
        value = float(digits) * 10.0 ** exp
        signed = m.group("sign") in ("-", "\u2212") and (m.start() == 0 or not text[m.start() - 1].isalnum())
        if signed:
            value = -value
        decimals = len(m.group("frac") or "")
        tolerance = 0.5 * 10.0 ** (exp - decimals)
        return value, tolerance, (m.group("suffix") or "").strip() == "%"
    return None


def printed_numbers(text: str) -> list[float]:
    """Every number in a piece of output text; a thousands-comma group counts whole and by parts."""
    found = []
    for m in NUMBER.finditer(ANSI.sub("", text)):
        s = m.group(0)
        if not re.search(r"\d", s):
            continue
        s = s.replace("\u2212", "-")
        try:
            found.append(float(s.replace(",", "")))
        except ValueError:
            continue
        if "," in s:  # "1,234" may also be the list 1, 234
            found += [float(p) for p in re.findall(r"\d+(?:\.\d+)?", s)]
    return found


def output_text(output: dict) -> str:
    kind = output.get("output_type")
    if kind == "stream":
        value = output.get("text", "")
        return "".join(value) if isinstance(value, list) else value
    parts = []
    for mime in TEXT_MIMES:
        value = output.get("data", {}).get(mime)
        if value is None:
            continue
        value = "".join(value) if isinstance(value, list) else value
        parts.append(html.unescape(TAG.sub(" ", value)) if mime == "text/html" else value)
    return "\n".join(parts)


def numbers_of(nb: dict) -> list[tuple[float, int]]:
    """(number, cell index) of every number the notebook's code cells print."""
    return [(x, i) for i, cell in enumerate(nb.get("cells", [])) if cell.get("cell_type") == "code"
            for output in cell.get("outputs", []) for x in printed_numbers(output_text(output))]


def claims_of(name: str, nb: dict) -> list[Claim]:
    claims = []
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "markdown":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        for m in SPAN.finditer(source):
            attrs = {k.lower(): v[1:-1] for k, v in ATTR.findall(m.group(1))}
            if "claim" not in attrs.get("class", "").split():
                continue
            text = html.unescape(TAG.sub("", m.group(2)))
            parsed = parse_number(text)
            value, tolerance, percent = parsed if parsed else (None, 0.0, False)
            claims.append(Claim(name, i, text, value, tolerance, percent, attrs.get("data-nb")))
    return claims


def matches(claim: Claim, printed: float) -> bool:
    if claim.value == 0:  # "0" means zero: rounding a printed 5.7e-06 to 0 would hide the difference
        return printed == 0
    slack = claim.tolerance * (1 + 1e-9) + 1e-12 * abs(claim.value)
    if abs(printed - claim.value) <= slack:
        return True
    return claim.percent and abs(printed * 100 - claim.value) <= slack


def nearest(claim: Claim, numbers: list[tuple[float, int]], k: int = 3) -> str:
    def distance(item):
        x = item[0]
        return min(abs(x - claim.value), abs(x * 100 - claim.value) if claim.percent else math.inf)

    shown = sorted(numbers, key=distance)[:k]
    return ", ".join(f"{x:g} (cell {i})" for x, i in shown) or "none: the outputs print no number"


def find_notebook(folder: Path, prefix: str) -> Path | None:
    found = sorted(folder.glob(f"{prefix}_*.ipynb"))
    return found[0] if len(found) == 1 else None


def check(paths: list[Path]) -> tuple[dict[str, int], list[Failure]]:
    """Claims per notebook and the failures, for executed notebooks (data-nb looks beside each)."""
    cache: dict[Path, dict] = {}

    def load(path: Path) -> dict:
        if path not in cache:
            cache[path] = json.loads(path.read_text(encoding="utf-8"))
        return cache[path]

    counts, failures = {}, []
    for path in paths:
        claims = claims_of(path.name, load(path))
        counts[path.name] = len(claims)
        for claim in claims:
            if claim.value is None:
                failures.append(Failure(claim, "no number in the span"))
                continue
            source = path
            if claim.against is not None:
                source = find_notebook(path.parent, claim.against)
                if source is None:
                    failures.append(Failure(claim, f"data-nb={claim.against!r}: no single executed notebook "
                                                   f"{claim.against}_*.ipynb in {path.parent.name}/"))
                    continue
            numbers = numbers_of(load(source))
            if not any(matches(claim, x) for x, _ in numbers):
                where = "" if source == path else f" of {source.name}"
                failures.append(Failure(claim, f"no printed number{where} matches it; nearest: "
                                               f"{nearest(claim, numbers)}"))
    return counts, failures


def notebooks_in(args: list[str | Path]) -> list[Path]:
    found = []
    for arg in map(Path, args):
        found += sorted(arg.glob("*.ipynb")) if arg.is_dir() else [arg]
    return found


def report(counts: dict[str, int], failures: list[Failure]) -> str:
    """One line per notebook: how many claims it has and how many fail."""
    failed = {}
    for f in failures:
        failed[f.claim.notebook] = failed.get(f.claim.notebook, 0) + 1
    return "\n".join(f"{name}: {n} claim(s)" + (f", {failed[name]} failing" if name in failed else "")
                     for name, n in counts.items())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or any(a.startswith("-") for a in args):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    notebooks = notebooks_in(args)
    if not notebooks:
        print(f"error: no notebooks in {' '.join(args)}", file=sys.stderr)
        return 2
    counts, failures = check(notebooks)
    for f in failures:
        print(f)
    print(report(counts, failures), file=sys.stderr)
    print(f"claims check: {sum(counts.values())} claim(s), {len(failures)} failing", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
