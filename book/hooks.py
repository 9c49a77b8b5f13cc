"""mkdocs hooks for the notebook pages.

on_post_page drops the two loaders from a CDN that nbconvert writes into each notebook page.
MathJax 2: the site bundles MathJax 3 instead (extra_javascript in book/mkdocs.yml), which typesets
the notebook pages' $...$ and $$...$$ as well. Mermaid: imported only for mermaid outputs, which the
notebooks do not make. book/build.py's check fails if anything else loads from another host.

on_page_content gives each table-of-contents entry of a notebook page its heading's text and id:
mkdocs-jupyter builds the table from a markdown copy of the notebook that loses inline code, so
"## 2. `main()`, piece by piece" was listed as "2. , piece by piece" and linked to #2-piece-by-piece,
an id the page does not have (the heading's is 2-main-piece-by-piece). Entries and headings are in
the same order; when their counts differ the table is left as it is (book/build.py's check_site then
reports any link to a missing anchor).
"""

import re

NBCONVERT_MATHJAX = re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S)
MERMAID = re.compile(r'<script type="module">(?:(?!</script>).)*?\.jp-Mermaid(?:(?!</script>).)*?</script>', re.S)
HEADING = re.compile(r'<h([1-6])\s+id="([^"]+)"[^>]*>(.*?)</h\1>', re.S)
ANCHOR = re.compile(r'<a class="anchor-link"[^>]*>.*?</a>', re.S)
TAG = re.compile(r"<[^>]+>")


def headings(html: str) -> list[tuple[int, str, str]]:
    """(level, id, text) of each heading, text as HTML-escaped plain text (tags and the pilcrow dropped)."""
    return [(int(level), hid, " ".join(TAG.sub("", ANCHOR.sub("", inner)).split()))
            for level, hid, inner in HEADING.findall(html)]


def on_page_content(html: str, page, config, files) -> str:
    if not page.file.src_path.endswith(".ipynb"):
        return html
    entries = []

    def walk(items):
        for item in items:
            entries.append(item)
            walk(item.children)

    walk(page.toc)
    found = [h for h in headings(html) if h[0] <= max((e.level for e in entries), default=0)]
    if len(found) == len(entries) and all(e.level == h[0] for e, h in zip(entries, found)):
        for entry, (_, hid, text) in zip(entries, found):
            entry.id, entry.title = hid, text
    return html


def on_post_page(output: str, page, config) -> str:
    return MERMAID.sub("", NBCONVERT_MATHJAX.sub("", output))
