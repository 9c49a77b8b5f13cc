"""book/: executing notebooks for the site, rewriting links, and checking the built HTML."""

import json

import nbformat
import pytest

from book import build, execute

REPO = "https://github.com/OWNER/REPO"


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
