"""Build the tutorial site from the executed notebooks (what `make book` runs after `make notebooks`).

    python book/build.py [--repo-url https://github.com/<owner>/<name>] [--branch main]

0. Checks the executed notebooks: the output gate (book/gate.py: no compiler text, machine paths,
   unfinished progress bars, long outputs, tracebacks, numpy/widget reprs, warnings) and the claims
   check (book/claims.py: every `<span class="claim">` number is one the outputs print). Every
   failure is printed, and the site is not built while there is one. The number of claims of each
   notebook is reported.
1. Assembles the pages under outputs/book/src: README.md as the landing page (README.zh-CN.md
   beside it when present), the executed notebooks from outputs/executed/ in file order, the data and
   model cards and docs/ (the glossary). Each notebook page opens with what works where (locally,
   Binder, Colab) and, when the repository's URL is known, links to Colab, Binder and its source.
   Relative links are rewritten to the page they now point to, or to the file in the repository;
   without a repository URL a link to a file that is not a page becomes its plain text.
2. Runs `mkdocs build --strict` (book/mkdocs.yml) into outputs/book/site, through a temporary folder.
3. Checks the built HTML (check_site): no broken internal link, no missing image, no script or
   stylesheet from another host, no error output in a notebook, no placeholder repository URL.

--repo-url empty (the default) means the public URL is unknown: the site then has no Colab, Binder
or source links at all. A placeholder (`OWNER/REPO` and the like) is refused, so is a URL that is not
a github.com repository (Colab and Binder open notebooks from GitHub).

Fails, with the thing to fix, when a notebook has no executed copy, an executed copy is older than
its notebook (its code differs) or holds an error output, a notebook's first code cell is not the
install cell, or the install cell's REPO_URL is a placeholder or another URL than --repo-url.
"""

import argparse
import json
import posixpath
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote, urlsplit

import mathjax  # django-static-mathjax: MathJax 3 as files, bundled so the site works offline
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python book/build.py`
    sys.path.insert(0, str(ROOT))

from book import claims, gate  # noqa: E402

BOOK = ROOT / "outputs" / "book"
# [text](target "title") and ![alt](target): the text may hold one level of brackets
LINK = re.compile(r"(!?)\[((?:[^\[\]\n]|\[[^\]\n]*\])*)\]\(([^)\s]+)((?:\s+\"[^\"]*\")?)\)")
INSTALL_URL = re.compile(r'^REPO_URL = "([^"]*)"', re.M)
PLACEHOLDER = re.compile(r"\b(?:owner|user|username|your[-_]?(?:name|user|username|org))/"
                         r"(?:repo|repository|project|your[-_]?repo)\b", re.I)
GITHUB = re.compile(r"^https://github\.com/([A-Za-z0-9][A-Za-z0-9-]*)/([A-Za-z0-9._-]+?)/?$")
MATHJAX_EXTENSIONS = ["input/tex/extensions/textmacros.js"]  # text-mode \_ (see book/assets/mathjax-config.js)
TEXT_SUFFIXES = {".html", ".ipynb", ".json", ".md", ".txt", ".xml", ".js"}


class BuildError(Exception):
    """A one-line reason the site cannot be built."""


def page_map() -> dict[str, str]:
    """Repository path -> site path of every page, in nav order."""
    pages = {"README.md": "index.md"}
    if (ROOT / "README.zh-CN.md").exists():
        pages["README.zh-CN.md"] = "zh-CN.md"
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        pages[f"notebooks/{nb.name}"] = f"notebooks/{nb.name}"
    for card in sorted((ROOT / "data_cards").glob("*.md"), key=lambda p: (p.name != "README.md", p.name)):
        pages[f"data_cards/{card.name}"] = f"data_cards/{card.name}"
    for card in sorted((ROOT / "model_cards").glob("*.md")):
        pages[f"model_cards/{card.name}"] = f"model_cards/{card.name}"
    for doc in sorted((ROOT / "docs").glob("*.md")):
        pages[f"docs/{doc.name}"] = doc.name
    return pages


def page_url(site_path: str) -> str:
    """The folder URL mkdocs gives a page (use_directory_urls), relative to the site root."""
    p = PurePosixPath(site_path)
    if p.name in ("index.md", "README.md"):
        return "" if str(p.parent) == "." else f"{p.parent}/"
    return f"{p.with_suffix('')}/"


def check_repo_url(repo: str) -> str:
    """The repository URL without a trailing slash, or "" (unknown); a placeholder or non-GitHub URL is refused."""
    repo = repo.strip().rstrip("/")
    if not repo:
        return ""
    if PLACEHOLDER.search(repo) or "<" in repo or "{" in repo:
        raise BuildError(f"--repo-url {repo!r} is a placeholder: give the real repository's URL, or none "
                         "(the site then has no Colab, Binder or source links)")
    if not GITHUB.match(repo):
        raise BuildError(f"--repo-url {repo!r} is not https://github.com/<owner>/<name> "
                         "(Colab and Binder open notebooks from GitHub)")
    return repo


def rewrite_links(text: str, repo_path: str, pages: dict, repo: str, branch: str, in_notebook: bool) -> str:
    """Point each relative link at its page in the site, or at the file in the repository; with no
    repository URL ("") a link to a file that is not a page becomes its text."""
    here = PurePosixPath(repo_path).parent
    site_here = pages[repo_path]

    def one(m: re.Match) -> str:
        bang, label, target, title = m.groups()
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target):
            return m.group(0)
        path, _, anchor = target.partition("#")
        norm = posixpath.normpath(str(here / unquote(path)))
        if norm in pages:
            if in_notebook:  # nbconvert keeps links as written: give the page's final URL
                new = posixpath.relpath(page_url(pages[norm]) or ".", page_url(site_here) or ".") + "/"
            else:  # mkdocs turns links between source files into page URLs itself
                new = posixpath.relpath(pages[norm], posixpath.dirname(site_here) or ".")
        elif repo:
            kind = "tree" if (ROOT / norm).is_dir() else "blob"
            new = f"{repo}/{kind}/{branch}/{quote(norm)}"
        else:
            return label
        return f"{bang}[{label}]({new}{'#' + anchor if anchor else ''}{title})"

    return LINK.sub(one, text)


WHERE = ("**Where this runs.** Locally, in a clone of the repository: `make lab` opens the notebooks, and "
         "every cell runs on a CPU (this page is that run). Binder builds the repository from "
         "`environment.yml`; this is untested. On Colab (Python 3.12 or 3.13) the first code cell installs it "
         "with pip inside `pyproject.toml`'s ranges, keeping Colab's torch; the tested set ran on Python "
         "3.13 in a Debian chroot, not yet on Colab itself. On a machine without a GPU, DeepSpeed announces "
         "once `[WARNING] ... Setting accelerator to CPU`: expected here, not an error.")


def launch_links(name: str, repo: str, branch: str) -> str:
    """The block each notebook page opens with: launch links when the repository is known, and what works where."""
    executed = "*Executed once by `make notebooks`; these are that run's outputs.*"
    if not repo:
        return (f"{WHERE} This site was built without the repository's public URL, so it links to no "
                f"Colab, Binder or source copy.\n\n{executed}")
    m = GITHUB.match(repo)
    if not m:
        raise BuildError(f"REPO_URL {repo!r} is not https://github.com/<owner>/<name>; the launch links need one")
    owner, project = m.groups()
    colab = f"https://colab.research.google.com/github/{owner}/{project}/blob/{branch}/notebooks/{name}"
    binder = f"https://mybinder.org/v2/gh/{owner}/{project}/{branch}?labpath=notebooks%2F{quote(name)}"
    source = f"{repo}/blob/{branch}/notebooks/{name}"
    return (f'<p class="launch-links"><a href="{colab}">Open in Colab</a> <a href="{binder}">Launch on Binder</a> '
            f'<a href="{source}">Source on GitHub</a></p>\n\n{WHERE}\n\n{executed}')


def with_launch_block(nb: dict, block: str) -> None:
    """Put the block right under the page's title (the first `# ` line of the first markdown cell),
    or in a cell of its own after the first markdown cell when there is no title."""
    first = next((i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "markdown"), -1)
    if first >= 0:
        text = "".join(nb["cells"][first]["source"])
        m = re.search(r"^#\s+.+$", text, re.M)
        if m:
            nb["cells"][first]["source"] = f"{text[:m.end()]}\n\n{block}\n\n{text[m.end():].lstrip(chr(10))}"
            return
    nb["cells"].insert(first + 1, {"cell_type": "markdown", "id": "launch-links", "metadata": {}, "source": block})


def code_of(nb: dict) -> list[str]:
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def stage_notebook(name: str, executed: Path, pages: dict, repo: str, branch: str,
                   notebooks: Path = ROOT / "notebooks") -> dict:
    """The page of one notebook: its executed copy, checked against notebooks/NAME, links rewritten,
    the launch block under its title."""
    source = json.loads((notebooks / name).read_text(encoding="utf-8"))
    path = executed / name
    if not path.exists():
        raise BuildError(f"{path} is missing: run `make notebooks` first")
    nb = json.loads(path.read_text(encoding="utf-8"))
    if code_of(nb) != code_of(source):
        raise BuildError(f"{path} is older than notebooks/{name} (its code differs): run `make notebooks`")
    for i, cell in enumerate(nb["cells"]):
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            raise BuildError(f"{path}: cell {i} has an error output; fix notebooks/{name} and run `make notebooks`")
    if not code_of(source) or not code_of(source)[0].startswith("# Install the project when it is missing"):
        raise BuildError(f"notebooks/{name}: its first code cell is not the install cell (Colab and Binder need it): "
                         f"run `python book/insert_install_cell.py notebooks/{name}`")
    urls = {u for c in code_of(source) for u in INSTALL_URL.findall(c)} - {""}
    if any(PLACEHOLDER.search(u) for u in urls):
        raise BuildError(f"notebooks/{name}: the install cell's REPO_URL {sorted(urls)} is a placeholder: set it to "
                         "\"\" or the real URL (`python book/insert_install_cell.py --update notebooks/*.ipynb`)")
    if urls and urls != {repo}:
        raise BuildError(f"notebooks/{name}: the install cell's REPO_URL {sorted(urls)} is not the build's "
                         f"--repo-url {repo!r} (the Makefile's REPO_URL); set the same URL in both")
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            text = rewrite_links("".join(cell["source"]), f"notebooks/{name}", pages, repo, branch, True)
            cell["source"] = text
    with_launch_block(nb, launch_links(name, repo, branch))
    return nb


def title_of(nb: dict, default: str) -> str:
    for cell in nb["cells"]:
        m = re.search(r"^#\s+(.+)$", "".join(cell["source"]), re.M) if cell["cell_type"] == "markdown" else None
        if m:
            return m.group(1).strip()
    return default


def assemble(src: Path, executed: Path, repo: str, branch: str) -> list:
    """Write every page under src; return the nav."""
    pages = page_map()
    nav_notebooks, nav_cards, nav_models, nav_top = [], [], [], []
    for repo_path, site_path in pages.items():
        dest = src / site_path
        dest.parent.mkdir(parents=True, exist_ok=True)
        if repo_path.endswith(".ipynb"):
            nb = stage_notebook(PurePosixPath(repo_path).name, executed, pages, repo, branch)
            dest.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            nav_notebooks.append({title_of(nb, dest.stem): site_path})
            continue
        text = (ROOT / repo_path).read_text(encoding="utf-8")
        dest.write_text(rewrite_links(text, repo_path, pages, repo, branch, False), encoding="utf-8")
        if repo_path.startswith("data_cards/"):
            nav_cards.append(site_path)
        elif repo_path.startswith("model_cards/"):
            nav_models.append(site_path)
        elif repo_path == "README.md":
            nav_top.append({"Home": site_path})
        elif repo_path == "README.zh-CN.md":
            nav_top.append({"中文": site_path})
        else:
            nav_top.append(site_path)
    assets = src / "assets"
    shutil.copytree(ROOT / "book" / "assets", assets)
    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    (assets / "mathjax").mkdir()
    shutil.copy2(es5 / "tex-svg.js", assets / "mathjax" / "tex-svg.js")
    for extension in MATHJAX_EXTENSIONS:  # loaded by assets/mathjax-config.js, from beside tex-svg.js
        (assets / "mathjax" / extension).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(es5 / extension, assets / "mathjax" / extension)
    readmes = sum(1 for p in ("README.md", "README.zh-CN.md") if p in pages)  # first in nav_top
    sections = [{"Notebooks": nav_notebooks}, {"Data cards": nav_cards}]
    sections += [{"Model cards": nav_models}] if nav_models else []
    return nav_top[:readmes] + sections + nav_top[readmes:]


class Refs(HTMLParser):
    """The links, images, scripts and stylesheets of one HTML page, its anchors and its error outputs."""

    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str]] = []
        self.ids: set[str] = set()
        self.errors = 0
        self.in_script = False
        self.script_urls: list[str] = []

    def handle_endtag(self, tag):
        self.in_script = self.in_script and tag != "script"

    def handle_data(self, data):
        if self.in_script:  # an inline script that fetches or imports from another host
            self.script_urls += re.findall(r"""(?:import|fetch|src\s*=)\s*\(?\s*["'`](https?://[^"'`]+)""", data)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.ids.update(v for k, v in attrs if k == "id" or (tag == "a" and k == "name"))
        if tag == "a" and a.get("href"):
            self.refs.append(("link", a["href"]))
        elif tag == "img" and a.get("src") is not None:
            self.refs.append(("image", a["src"]))
        elif tag == "script" and a.get("src"):
            self.refs.append(("script", a["src"]))
        elif tag == "script":
            self.in_script = True
        elif tag == "link" and a.get("href") and "stylesheet" in (a.get("rel") or ""):
            self.refs.append(("stylesheet", a["href"]))
        if "output_error" in (a.get("class") or "") or a.get("data-mime-type") == "application/vnd.jupyter.error":
            self.errors += 1


def check_site(site: Path) -> list[str]:
    """Problems in the built site: broken internal links, missing images, off-site scripts, errors,
    a placeholder repository URL in any page, notebook or index."""
    problems = []
    for path in sorted(p for p in site.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file()):
        found = PLACEHOLDER.findall(path.read_text(encoding="utf-8", errors="replace"))
        if found:
            problems.append(f"{path.relative_to(site)}: placeholder repository URL {found[0]!r} "
                            f"({len(found)} time(s))")
    parsed = {}
    for page in sorted(p for p in site.rglob("*.html") if p.name != "404.html"):  # 404 uses root paths
        parsed[page.resolve()] = parser = Refs()
        parser.feed(page.read_text(encoding="utf-8"))
    anchors = []  # (page, link, target file, fragment): checked once every page's ids are known
    for page, parser in parsed.items():
        rel = page.relative_to(site.resolve())
        problems += [f"{rel}: inline script loads from another host: {url}" for url in parser.script_urls]
        if parser.errors:
            problems.append(f"{rel}: {parser.errors} error output(s)")
        for kind, ref in parser.refs:
            parts = urlsplit(ref)
            if parts.scheme in ("http", "https") or ref.startswith("//"):
                if kind in ("script", "stylesheet", "image"):
                    problems.append(f"{rel}: {kind} loaded from another host: {ref}")
                continue
            if parts.scheme or not parts.path:  # data:, mailto:, or an anchor on the same page
                if kind == "image" and not parts.scheme and not parts.path:
                    problems.append(f"{rel}: image with an empty src")
                if kind == "link" and not parts.scheme and parts.fragment:
                    anchors.append((rel, ref, page, unquote(parts.fragment)))
                continue
            target = (page.parent / unquote(parts.path)).resolve()
            if target.is_dir() or parts.path.endswith("/"):
                target = target / "index.html"
            if not target.is_file() or site.resolve() not in target.parents:
                problems.append(f"{rel}: broken {kind} {ref}")
            elif kind == "link" and parts.fragment and target.suffix == ".html":
                anchors.append((rel, ref, target, unquote(parts.fragment)))
    for rel, ref, target, fragment in anchors:
        if target in parsed and fragment not in parsed[target].ids:
            problems.append(f"{rel}: link to a missing anchor {ref}")
    return problems


def check_outputs(executed: Path) -> list[str]:
    """The output gate and the claims check over the executed copy of every notebook; prints the
    number of claims of each notebook; returns every failure (one line each)."""
    paths = []
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        if not (executed / nb.name).exists():
            raise BuildError(f"{executed / nb.name} is missing: run `make notebooks` first")
        paths.append(executed / nb.name)
    failures = [f"output gate: {f}" for path in paths for f in gate.check_notebook(path)]
    counts, wrong = claims.check(paths)
    failures += [f"claims: {f}" for f in wrong]
    print("claims per notebook:\n" + claims.report(counts, wrong), flush=True)
    return failures


def build(repo: str, branch: str, executed: Path, book: Path = BOOK) -> Path:
    repo = check_repo_url(repo)
    failures = check_outputs(executed)
    if failures:
        raise BuildError(f"{len(failures)} failure(s) in the executed notebooks (book/gate.py, book/claims.py):\n"
                         + "\n".join(failures))
    src, site, tmp_site = book / "src", book / "site", book / "site.tmp"
    for d in (src, tmp_site):
        shutil.rmtree(d, ignore_errors=True)
    try:
        nav = assemble(src, executed, repo, branch)
    except BuildError:
        shutil.rmtree(src, ignore_errors=True)  # no half-assembled pages left behind
        raise
    config = {"INHERIT": str(ROOT / "book" / "mkdocs.yml"), "docs_dir": str(src), "site_dir": str(tmp_site),
              "hooks": [str(ROOT / "book" / "hooks.py")], "nav": nav}
    if repo:  # the header's repository link; none when the URL is unknown
        config.update(repo_url=repo, edit_uri="")
    config_file = book / "mkdocs.yml"
    config_file.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-f", str(config_file)],
                         capture_output=True, text=True)
    if run.returncode:
        shutil.rmtree(tmp_site, ignore_errors=True)
        raise BuildError("mkdocs build failed:\n" + (run.stderr or run.stdout).strip())
    problems = check_site(tmp_site)
    if problems:
        shutil.rmtree(tmp_site, ignore_errors=True)
        raise BuildError(f"{len(problems)} problem(s) in the built site:\n" + "\n".join(problems))
    shutil.rmtree(site, ignore_errors=True)
    tmp_site.rename(site)
    # what the site was built with, for tests/browser (launch links expected or not); not part of the site
    (book / "build.json").write_text(json.dumps({"repo_url": repo, "branch": branch}) + "\n", encoding="utf-8")
    return site


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo-url", default="", help="the public repository, https://github.com/<owner>/<name>; "
                   "empty (the default): unknown, and the site has no Colab, Binder or source links")
    p.add_argument("--branch", default="main")
    p.add_argument("--executed", type=Path, default=ROOT / "outputs" / "executed")
    p.add_argument("--book", type=Path, default=BOOK, help="where the pages and the site go (outputs/book)")
    args = p.parse_args(argv)
    try:
        site = build(args.repo_url, args.branch or "main", args.executed, args.book)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"site built: {site}/index.html ({sum(1 for _ in site.rglob('*.html'))} pages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
