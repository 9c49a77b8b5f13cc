"""book/gate.py: each rule fails on its kind of bad output, passes clean ones; the build refuses a failing folder."""

import json
import shutil
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from book import build, gate

ROOT = build.ROOT


def stream(text: str, name: str = "stdout"):
    return new_output("stream", name=name, text=text)


def result(data: dict):
    return new_output("execute_result", data=data, execution_count=1)


def notebook(*outputs, source: str = "x") -> dict:
    cell = new_code_cell(source, outputs=list(outputs), execution_count=1)
    return json.loads(nbformat.writes(new_notebook(cells=[new_markdown_cell("# A page"), cell])))


def rules(*outputs) -> list[str]:
    return [f.rule for f in gate.check_notebook("demo.ipynb", notebook(*outputs))]


BAD = {
    "compiler": [stream("/usr/bin/ld: cannot find -laio: No such file or directory\n", "stderr"),
                 stream("collect2: error: ld returned 1 exit status\n", "stderr")],
    "path": [stream("saved to /tmp/nb01_abcd/out\n"), stream("root   /work/main/toy_world\n"),
             stream("/root/.cache/x\n"), stream("/home/me/x\n"),
             stream("lib/python3.11/site-packages/deepspeed/ops/op_builder\n"),
             result({"text/plain": f"'{ROOT}/outputs'"}),
             result({"text/html": f"<td>{sys.prefix}/bin/python</td>", "text/plain": "df"})],
    "progress": [stream("Loading weights:   0%|          | 0/68 [00:00<?, ?it/s]\n", "stderr"),
                 stream("epoch 1:  50%|#####     | 12/24\repoch 1: 100%|##########| 24/24\n", "stderr")],
    "widget": [new_output("display_data", data={
                     "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2,
                                                                 "version_minor": 0},
                     "text/plain": "  0%|          | 0/24 [00:00<?, ?it/s]"})],
    "length": [stream("".join(f"step {i} loss 1.0\n" for i in range(41)))],
    "traceback": [new_output("error", ename="ValueError", evalue="boom", traceback=["ValueError: boom"]),
                  stream("Traceback (most recent call last):\n  File \"x.py\", line 1\n", "stderr")],
    "repr": [result({"text/plain": "np.float64(0.25)"}), result({"text/plain": "numpy.int64(3)"}),
             result({"text/plain": "HBox(children=(HTML(value=''), FloatProgress(value=0.0)))"})],
    "warning": [stream("x.py:3: UserWarning: the thing\n", "stderr"), stream("FutureWarning: soon\n", "stderr"),
                stream("DeprecationWarning: old\n", "stderr"), stream("RuntimeWarning: overflow\n", "stderr")],
}


@pytest.mark.parametrize("rule,output", [(rule, o) for rule, outs in BAD.items() for o in outs],
                         ids=lambda x: x if isinstance(x, str) else "")
def test_each_rule_fails_on_its_bad_output(rule, output):
    assert rule in rules(output), rules(output)


@pytest.mark.parametrize("output", [
    stream("exact match 94.2% (213 of 226)\nsaved to <tmp>/out and toy_world/opt-tiny\n"),
    stream("outputs/tmp/run and https://example.org/home/page and ./work/notes\n"),
    stream("epoch 1: 100%|##########| 24/24 [00:01<00:00]\n", "stderr"),
    stream("".join(f"step {i}\n" for i in range(40))),  # 40 lines: the limit itself
    result({"text/html": "<table>" + "<tr><td>1</td></tr>" * 100 + "</table>",
            "text/plain": "\n".join(["row"] * 100)}),  # a DataFrame: its text/plain is not shown
    result({"text/plain": "0.25"}),
    stream("[2026-12-01 20:37:09] [WARNING] [real_accelerator.py:213:get_accelerator] Setting accelerator to CPU\n"),
    stream("error: --labels_2023 cannot be combined with --packing\n"),
], ids=["numbers-and-relative-paths", "relative-tmp-url", "finished-bar", "forty-lines", "dataframe",
        "plain-float", "logger-warning", "cli-error"])
def test_clean_outputs_pass(output):
    assert rules(output) == []


def test_lines_of_all_outputs_of_a_cell_add_up():
    half = stream("".join(f"line {i}\n" for i in range(21)))
    assert rules(half) == [] and rules(half, half) == ["length"]


def test_a_failure_names_notebook_cell_rule_and_line():
    nb = notebook(stream("ok\n"), stream("/usr/bin/ld: cannot find -laio\n", "stderr"))
    (failure,) = gate.check_notebook("03_lora.ipynb", nb)
    assert str(failure) == "03_lora.ipynb: cell 1: compiler: /usr/bin/ld: cannot find -laio"


def test_every_failure_is_reported_not_only_the_first():
    nb = notebook(stream("np.float64(1.0)\n/tmp/x\n"), stream("UserWarning: y\n", "stderr"))
    assert [f.rule for f in gate.check_notebook("a.ipynb", nb)] == ["repr", "path", "warning"]


def test_markdown_cells_are_not_outputs():
    nb = json.loads(nbformat.writes(new_notebook(cells=[new_markdown_cell("/tmp/ and np.float64(1)")])))
    assert gate.check_notebook("a.ipynb", nb) == []


def test_command_line_exit_status(tmp_path, capsys):
    (tmp_path / "good.ipynb").write_text(json.dumps(notebook(stream("fine\n"))))
    assert gate.main([str(tmp_path)]) == 0
    (tmp_path / "bad.ipynb").write_text(json.dumps(notebook(stream("/work/x\n"))))
    assert gate.main([str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert "bad.ipynb: cell 1: path: /work/x" in out.out and "1 failure(s) in 2 notebook(s)" in out.err


def test_build_exits_non_zero_on_a_failing_executed_folder(tmp_path, capsys):
    """Executed copies of every notebook, one of them with linker noise: the build stops before rendering."""
    names = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    for name in names:
        shutil.copy(ROOT / "notebooks" / name, tmp_path / name)
    nb = json.loads((tmp_path / names[0]).read_text())
    index, cell = next((i, c) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code")
    cell["outputs"] = [stream("/usr/bin/ld: cannot find -laio\n", "stderr"), stream("np.float64(0.25)\n")]
    (tmp_path / names[0]).write_text(json.dumps(nb))
    book = tmp_path / "book"
    assert build.main(["--executed", str(tmp_path), "--book", str(book)]) == 2
    err = capsys.readouterr().err
    assert f"output gate: {names[0]}: cell {index}: compiler: /usr/bin/ld: cannot find -laio" in err
    assert f"output gate: {names[0]}: cell {index}: repr: np.float64(0.25)" in err
    assert not (book / "site").exists() and not (book / "src").exists()


def test_deepspeed_chats_default_data_path_is_a_value_not_a_machine_path():
    assert rules(stream("--data_output_path  /tmp/data_files/  (default)\n")) == []
    assert rules(result({"text/plain": "['/tmp/data_files/', 'x']"})) == []
    assert rules(stream("cache in /tmp/data_files/nb05_x/cache\n")) == ["path"]  # a folder inside it is this machine's
    assert rules(stream("cache in /tmp/nb05_x/data_files/\n")) == ["path"]
