"""book/: executing notebooks for the site, rewriting links, and checking the built HTML."""

import json

import nbformat
import pytest

from book import build, execute, insert_install_cell

REPO = "https://github.com/sft-tutorial/deepspeed-chat-step1"


def test_execute_keeps_the_executed_copy_and_names_the_failing_cell(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)"),
                                         nbformat.v4.new_code_cell("1 / 0"),
                                         nbformat.v4.new_code_cell("print('not reached')")])
    path = tmp_path / "broken.ipynb"
    nbformat.write(nb, path)
    error = execute.execute(path, tmp_path / "out", timeout=120)
    assert error == "cell 1 raised ZeroDivisionError: division by zero"
    ran = json.loads((tmp_path / "out" / "broken.ipynb").read_text())
    assert "".join(ran["cells"][0]["outputs"][0]["text"]) == "42\n"
    assert ran["cells"][1]["outputs"][0]["output_type"] == "error" and not ran["cells"][2]["outputs"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["broken.ipynb"]  # no temporary file left


def test_links_point_at_site_pages_or_the_repository():
    pages = {"README.md": "index.md", "docs/glossary.md": "glossary.md",
             "notebooks/04_zero3_saving.ipynb": "notebooks/04_zero3_saving.ipynb",
             "data_cards/README.md": "data_cards/README.md"}
    nb_text = "[ZeRO](../docs/glossary.md#zero), [code](../sftlib/zero.py), [web](https://example.org/a.md)"
    assert build.rewrite_links(nb_text, "notebooks/04_zero3_saving.ipynb", pages, REPO, "main", True) == (
        f"[ZeRO](../../glossary/#zero), [code]({REPO}/blob/main/sftlib/zero.py), [web](https://example.org/a.md)")
    md = "[cards](data_cards/README.md) and [the saver](notebooks/04_zero3_saving.ipynb) [tests](tests)"
    assert build.rewrite_links(md, "README.md", pages, REPO, "main", False) == (
        "[cards](data_cards/README.md) and [the saver](notebooks/04_zero3_saving.ipynb) "
        f"[tests]({REPO}/tree/main/tests)")


def test_a_stale_or_failed_executed_copy_is_refused(tmp_path):
    name = sorted(p.name for p in (build.ROOT / "notebooks").glob("*.ipynb"))[0]
    nb = json.loads((build.ROOT / "notebooks" / name).read_text())
    pages = build.page_map()
    with pytest.raises(build.BuildError, match="is missing: run `make notebooks`"):
        build.stage_notebook(name, tmp_path, pages, REPO, "main")
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code["source"] = "".join(code["source"]) + "\n# edited"
    (tmp_path / name).write_text(json.dumps(nb))
    with pytest.raises(build.BuildError, match="is older than"):
        build.stage_notebook(name, tmp_path, pages, REPO, "main")
    code["source"] = code["source"].removesuffix("\n# edited")
    code["outputs"] = [{"output_type": "error", "ename": "E", "evalue": "", "traceback": []}]
    (tmp_path / name).write_text(json.dumps(nb))
    with pytest.raises(build.BuildError, match="has an error output"):
        build.stage_notebook(name, tmp_path, pages, REPO, "main")


def test_check_site_finds_broken_links_missing_images_remote_scripts_and_errors(tmp_path):
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "index.html").write_text(
        '<a href="../">home</a><img src="data:image/png;base64,AAAA"><script src="../app.js"></script>')
    (tmp_path / "app.js").write_text("")
    (tmp_path / "index.html").write_text(
        '<a href="ok/">fine</a><a href="gone/">broken</a><img src="plot.png">'
        '<script src="https://cdn.example/x.js"></script><script>import("https://cdn.example/m.mjs")</script>'
        '<div class="jp-OutputArea-output" data-mime-type="application/vnd.jupyter.error">boom</div>')
    problems = build.check_site(tmp_path)
    assert sorted(p.split(": ")[1].split(" ")[0] for p in problems) == [
        "1", "broken", "broken", "inline", "script"], problems
    assert not [p for p in problems if p.startswith("ok/")]


def test_without_a_repository_url_links_to_files_become_text():
    pages = {"notebooks/04_zero3_saving.ipynb": "notebooks/04_zero3_saving.ipynb", "docs/glossary.md": "glossary.md"}
    text = "[ZeRO](../docs/glossary.md#zero), [the saver](../sftlib/zero.py), ![plot](../docs/x.png), [w](https://a.org)"
    assert build.rewrite_links(text, "notebooks/04_zero3_saving.ipynb", pages, "", "main", True) == (
        "[ZeRO](../../glossary/#zero), the saver, plot, [w](https://a.org)")


@pytest.mark.parametrize("url", ["https://github.com/OWNER/REPO", "https://github.com/owner/repo/",
                                 "https://github.com/<owner>/<name>", "https://github.com/your-name/your-repo"])
def test_a_placeholder_repository_url_is_refused(url):
    with pytest.raises(build.BuildError, match="placeholder"):
        build.check_repo_url(url)


def test_repository_urls_the_build_takes():
    assert build.check_repo_url("") == "" and build.check_repo_url(REPO + "/") == REPO
    with pytest.raises(build.BuildError, match="not https://github.com/"):
        build.check_repo_url("https://gitlab.com/a/b")
    assert build.main(["--repo-url", "https://github.com/OWNER/REPO", "--executed", "/nonexistent"]) == 2


def staged(tmp_path, repo: str, install_url: str = "") -> str:
    """One synthetic notebook (title, install cell, code) staged as the site would show it, as text."""
    cells = [nbformat.v4.new_markdown_cell("# A page\n\nWhat it does, see [the code](../sftlib/zero.py)."),
             nbformat.v4.new_code_cell(insert_install_cell.source(install_url)),
             nbformat.v4.new_code_cell("print(1)")]
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "run").mkdir(exist_ok=True)
    for folder in ("src", "run"):
        nbformat.write(nbformat.v4.new_notebook(cells=cells), tmp_path / folder / "09_page.ipynb")
    pages = {"notebooks/09_page.ipynb": "notebooks/09_page.ipynb"}
    nb = build.stage_notebook("09_page.ipynb", tmp_path / "run", pages, repo, "main", notebooks=tmp_path / "src")
    return json.dumps(nb)


def test_a_page_built_without_a_url_has_no_launch_links_and_says_what_works_where(tmp_path):
    page = staged(tmp_path, "")
    assert "colab.research.google.com" not in page and "mybinder" not in page and "github.com" not in page
    assert "OWNER" not in page and "Where this runs" in page and "Python 3.11" in page
    assert json.loads(page)["cells"][0]["source"].startswith("# A page\n\n**Where this runs.**")


def test_a_page_built_with_a_url_links_colab_binder_and_the_source(tmp_path):
    page = staged(tmp_path, REPO)
    assert "https://colab.research.google.com/github/sft-tutorial/deepspeed-chat-step1/blob/main/notebooks/" \
           "09_page.ipynb" in page
    assert "https://mybinder.org/v2/gh/sft-tutorial/deepspeed-chat-step1/main?labpath=notebooks%2F09_page.ipynb" in page
    assert f"{REPO}/blob/main/sftlib/zero.py" in page and "Where this runs" in page


def test_the_install_cell_must_name_no_url_or_the_builds(tmp_path):
    assert "Where this runs" in staged(tmp_path, REPO, install_url=REPO)
    with pytest.raises(build.BuildError, match="is not the build's --repo-url"):
        staged(tmp_path, "", install_url=REPO)
    with pytest.raises(build.BuildError, match="is a placeholder"):
        staged(tmp_path, REPO, install_url="https://github.com/OWNER/REPO")


def test_install_cell_update_keeps_the_cell_id(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# T"), nbformat.v4.new_code_cell("x = 1")])
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    assert insert_install_cell.insert(path) == "inserted" and insert_install_cell.insert(path) == "already there"
    first = json.loads(path.read_text())["cells"][1]
    first["source"] = insert_install_cell.MARKER + " (an older text)\n"
    data = json.loads(path.read_text())
    data["cells"][1] = first
    path.write_text(json.dumps(data))
    assert insert_install_cell.insert(path, update=True) == "updated"
    again = json.loads(path.read_text())["cells"]
    assert again[1]["id"] == first["id"] and "".join(again[1]["source"]) == insert_install_cell.source()
    assert ["".join(c["source"]) for c in again[::2]] == ["# T", "x = 1"]


def test_check_site_finds_a_placeholder_url(tmp_path):
    (tmp_path / "index.html").write_text('<a href="https://github.com/OWNER/REPO">source</a>')
    (tmp_path / "n.ipynb").write_text('{"x": "REPO_URL = \\"https://github.com/OWNER/REPO\\""}')
    assert build.check_site(tmp_path) == [
        "index.html: placeholder repository URL 'OWNER/REPO' (1 time(s))",
        "n.ipynb: placeholder repository URL 'OWNER/REPO' (1 time(s))"]


def test_check_site_finds_links_to_missing_anchors(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "index.html").write_text('<h2 id="two">Two</h2><a href="#two">ok</a><a href="#gone">no</a>'
                                               '<a href="../#top">ok</a><a href="../#nope">no</a>')
    (tmp_path / "index.html").write_text('<div id="top"></div><a href="a/#two">ok</a>')
    assert build.check_site(tmp_path) == ["a/index.html: link to a missing anchor #gone",
                                          "a/index.html: link to a missing anchor ../#nope"]


def test_the_table_of_contents_takes_each_headings_text_and_id():
    from types import SimpleNamespace

    from mkdocs.structure.toc import AnchorLink

    from book import hooks

    title, section = AnchorLink("A page", "a-page", 1), AnchorLink("2. , piece by piece", "2-piece-by-piece", 2)
    title.children = [section]
    page = SimpleNamespace(file=SimpleNamespace(src_path="notebooks/05_x.ipynb"), toc=[title])
    html = ('<h1 id="a-page">A page<a class="anchor-link" href="#a-page">¶</a></h1>'
            '<h2 id="2-main-piece-by-piece">2. <code>main()</code>, piece by piece<a class="anchor-link">¶</a></h2>')
    assert hooks.on_page_content(html, page, None, None) == html
    assert (section.title, section.id, section.url) == ("2. main(), piece by piece", "2-main-piece-by-piece",
                                                        "#2-main-piece-by-piece")
