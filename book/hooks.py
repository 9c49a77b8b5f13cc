"""mkdocs hook: drop the two loaders from a CDN that nbconvert writes into each notebook page.

MathJax 2: the site bundles MathJax 3 instead (extra_javascript in book/mkdocs.yml), which typesets
the notebook pages' $...$ and $$...$$ as well. Mermaid: imported only for mermaid outputs, which the
notebooks do not make. book/build.py's check fails if anything else loads from another host.
"""

import re

NBCONVERT_MATHJAX = re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S)
MERMAID = re.compile(r'<script type="module">(?:(?!</script>).)*?\.jp-Mermaid(?:(?!</script>).)*?</script>', re.S)


def on_post_page(output: str, page, config) -> str:
    return MERMAID.sub("", NBCONVERT_MATHJAX.sub("", output))
