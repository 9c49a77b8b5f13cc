"""A first run on a few rows: it finishes, or stops with exit 2 and one ``error:`` line; never a traceback,
and no cache folder ever holds an empty split.

Each case runs ``python -m sftlib.train`` in-process through ``sftlib.cli.run`` (the command line's code
path) on a tiny set of the toy world's rows: 1, 4 or 9 rows as a ``local/json`` folder (train.json and
eval.json), a ``local/jsonfile`` file and a ``messages`` file; a --data_split that gives phase 1 nothing;
chat turns with an unknown role. Runs are one epoch at --max_seq_len 128.
``python -m tests.data.test_tiny_data`` prints the table: input, what happens, traceback or not."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from sftlib.data import read_json_rows
from sftlib.errors import SFTError

RUN = "run"  # the expected outcome of a case that trains


def prompt_rows(world, n, start=0):
    return read_json_rows(world["data"] / "train.json")[start:start + n]


def chat_rows(world, n):
    return [json.loads(line) for line in (world["chat"] / "train.json").read_text().splitlines()[:n]]


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def folder(n, split=None):
    """local/json: a folder with train.json and eval.json of ``n`` rows each."""
    def make(world, tmp):
        write_jsonl(tmp / "rows" / "train.json", prompt_rows(world, n))
        write_jsonl(tmp / "rows" / "eval.json", prompt_rows(world, n, start=n))
        return [f"local/json={tmp / 'rows'}"] + (["--data_split", split] if split else [])
    return make


def one_file(n):
    """local/jsonfile: one file of ``n`` rows (eval is its 9:1 cut)."""
    def make(world, tmp):
        return [f"local/jsonfile={write_jsonl(tmp / 'rows.jsonl', prompt_rows(world, n))}"]
    return make


def chats(n, role_at=None, role="robot"):
    """messages: one file of ``n`` chats; ``role_at`` (1-based row) gets ``role`` in its second turn."""
    def make(world, tmp):
        rows = chat_rows(world, n)
        if role_at is not None:
            rows[role_at - 1]["messages"][1]["role"] = role
        path = write_jsonl(tmp / "chats.jsonl", rows)
        return [f"messages={path}", "--chat_template", str(world["chat"] / "chat_template.jinja")]
    return make


def null_answers(world, tmp):
    """local/json whose eval rows all have a null answer: skipped while tokenizing, leaving eval empty."""
    write_jsonl(tmp / "rows" / "train.json", prompt_rows(world, 9))
    write_jsonl(tmp / "rows" / "eval.json", [{**r, "chosen": None} for r in prompt_rows(world, 4, start=9)])
    return [f"local/json={tmp / 'rows'}"]


NO_EVAL = "phase 1 gets no eval rows ({} cut 9:1 into {} train / 0 eval)"
# (id, the data arguments (world, tmp) -> argv tail, RUN or a piece of the one error line)
CASES = [
    ("local/json, 1 row", folder(1), RUN),
    ("local/json, 4 rows", folder(4), RUN),
    ("local/json, 9 rows", folder(9), RUN),
    ("local/jsonfile, 1 row", one_file(1), NO_EVAL.format("1 row", 1)),
    ("local/jsonfile, 4 rows", one_file(4), NO_EVAL.format("4 rows", 4)),
    ("local/jsonfile, 9 rows", one_file(9), RUN),
    ("messages, 1 row", chats(1), NO_EVAL.format("1 row", 1)),
    ("messages, 4 rows", chats(4), NO_EVAL.format("4 rows", 4)),
    ("messages, 9 rows", chats(9), RUN),
    ("local/json, 9 rows, --data_split 0,10,0", folder(9, "0,10,0"),
     "phase 1 gets no train rows (9 train rows, --data_split 0,10,0 gives phases 1/2/3 0/9/0)"),
    ("local/json, 4 rows, --data_split 2,4,4 (the default)", folder(4, "2,4,4"),
     "phase 1 gets no train rows (4 train rows, --data_split 2,4,4 gives phases 1/2/3 0/2/2)"),
    ("messages, 4 rows, the last with role robot", chats(4, role_at=4),
     "chats.jsonl:4: messages[1] has the role 'robot'; a turn's role is system, user, assistant or tool"),
    ("messages, 20 rows, row 13 with role robot", chats(20, role_at=13), "chats.jsonl:13: messages[1] has the role"),
    ("local/json, every eval answer null", null_answers,
     "all 4 phase-1 eval rows were skipped while tokenizing (a prompt or answer missing or null)"),
]


def argv_for(world, tmp, make):
    data = make(world, tmp)
    return ["--model_name_or_path", str(world["opt"]), "--data_path", data[0], *data[1:],
            *([] if "--data_split" in data else ["--data_split", "10,0,0"]), "--max_seq_len", "128",
            "--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--dtype", "fp32",
            "--data_output_path", str(tmp / "cache")]


def empty_splits(cache: Path) -> list[str]:
    """Cache folders holding a split with no rows (there must be none)."""
    import datasets

    bad = []
    for folder in sorted(p for p in cache.glob("prompt_dataset_*") if p.is_dir()):
        meta = json.loads((folder / "meta.json").read_text())
        sizes = [len(datasets.load_from_disk(str(folder / split))) for split in ("train", "eval")]
        if min(sizes) == 0 or min(meta["train_rows"], meta["eval_rows"]) == 0:
            bad.append(folder.name)
    return bad


def attempt(world, tmp, make):
    """(exit code, stderr, stdout, history or None) of one run of the train command on ``make``'s data."""
    import contextlib
    import io

    from sftlib import cli, train

    out, err, histories = io.StringIO(), io.StringIO(), []
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.run(lambda argv: histories.append(train.main(argv)), argv_for(world, tmp, make))
        except SystemExit as stop:
            code = stop.code
    return code, err.getvalue(), out.getvalue(), histories[0] if histories else None


@pytest.mark.parametrize("case, make, expected", CASES, ids=[c[0] for c in CASES])
def test_a_tiny_set_runs_or_stops_in_one_line(world, tmp_path, case, make, expected):
    code, err, out, history = attempt(world, tmp_path, make)
    assert "Traceback" not in err + out
    if expected == RUN:
        assert code == 0 and history is not None, err[-2000:]
        assert history.train_samples > 0 and history.eval_samples > 0 and len(history["eval"]) == 2
    else:
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert code == 2 and len(lines) == 1 and expected in lines[0], err[-2000:]
        assert not [p for p in (tmp_path / "cache").glob("prompt_dataset_*") if p.is_dir()], "nothing cached"
    assert empty_splits(tmp_path / "cache") == []


def test_library_calls_never_cache_an_empty_split(world, tok, tmp_path):
    from sftlib.data import create_prompt_dataset

    write_jsonl(tmp_path / "rows.jsonl", prompt_rows(world, 4))
    for split, message in (("10,0,0", "phase 1 gets no eval rows"), ("0,10,0", "phase 1 gets no train rows")):
        with pytest.raises(SFTError, match=message):
            create_prompt_dataset(0, [f"local/jsonfile={tmp_path / 'rows.jsonl'}"], split, str(tmp_path / "c"), 1,
                                  1234, tok, 64)
    assert not [p for p in (tmp_path / "c").glob("prompt_dataset_*") if p.is_dir()]
    # phase 3 of 4 rows under 2,4,4: 2 train rows and no eval row
    with pytest.raises(SFTError, match=r"phase 3 gets no eval rows \(4 rows cut 9:1 into 4 train / 0 eval\)"):
        create_prompt_dataset(0, [f"local/jsonfile={tmp_path / 'rows.jsonl'}"], "2,4,4", str(tmp_path / "c"), 3,
                              1234, tok, 64)


def test_an_empty_split_cached_by_an_older_version_is_rebuilt(world, tok, tmp_path):
    import datasets

    from sftlib.data import cache_problem, create_prompt_dataset
    from sftlib.data.cache import manifest

    write_jsonl(tmp_path / "rows" / "train.json", prompt_rows(world, 9))
    write_jsonl(tmp_path / "rows" / "eval.json", prompt_rows(world, 9, start=9))
    args = (0, [str(tmp_path / "rows")], "10,0,0", str(tmp_path / "c"), 1, 1234, tok, 64)
    create_prompt_dataset(*args)
    folder = next(p for p in (tmp_path / "c").glob("prompt_dataset_*") if p.is_dir())
    evals = datasets.load_from_disk(str(folder / "eval"))  # what the older code left: an empty eval split
    evals.select([]).save_to_disk(str(tmp_path / "empty"))
    shutil.rmtree(folder / "eval")
    shutil.copytree(tmp_path / "empty", folder / "eval")
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "eval_rows": 0, "files": manifest(folder)}))
    assert cache_problem(folder) == "it holds an empty split"
    with pytest.warns(UserWarning, match="it holds an empty split"):
        _, rebuilt = create_prompt_dataset(*args)
    assert len(rebuilt) == 9 and empty_splits(tmp_path / "c") == []


def test_a_blend_needs_rows_in_total_not_from_every_set(world, tok, tmp_path):
    from sftlib.data import create_prompt_dataset

    write_jsonl(tmp_path / "big" / "train.json", prompt_rows(world, 40))
    write_jsonl(tmp_path / "big" / "eval.json", prompt_rows(world, 10, start=40))
    write_jsonl(tmp_path / "tiny.jsonl", prompt_rows(world, 2, start=50))  # 2 rows: no eval row of its own
    train, evals = create_prompt_dataset(0, [str(tmp_path / "big"), f"local/jsonfile={tmp_path / 'tiny.jsonl'}"],
                                         "10,0,0", str(tmp_path / "c"), 1, 1234, tok, 64, data_weights=[1, 1])
    assert len(train) == 42 and len(evals) == 10  # the empty eval part drops out of the blend
    # a set left empty by the split drops out with its own weight, not the next set's
    write_jsonl(tmp_path / "four" / "train.json", prompt_rows(world, 4, start=60))  # 2,4,4 gives phase 1 none
    write_jsonl(tmp_path / "four" / "eval.json", prompt_rows(world, 4, start=60))
    train, _ = create_prompt_dataset(0, [str(tmp_path / "four"), str(tmp_path / "big")], "2,4,4", str(tmp_path / "c"),
                                     1, 1234, tok, 64, data_weights=[5, 1])
    assert len(train) == 8  # all of big's phase-1 part (20% of 40), not 5/6 of it
    assert empty_splits(tmp_path / "c") == []


@pytest.fixture(scope="module")
def no_tool_template(tmp_path_factory):
    """A template that renders system, user and assistant turns and silently drops any other."""
    path = tmp_path_factory.mktemp("template") / "no_tool.jinja"
    path.write_text("{%- for m in messages %}{%- if m['role'] in ['system', 'user', 'assistant'] %}"
                    "{{- '<|' + m['role'] + '|>\n' }}{%- if m['role'] == 'assistant' %}{% generation %}"
                    "{{- m['content'] + eos_token }}{% endgeneration %}{%- else %}{{- m['content'] + eos_token }}"
                    "{%- endif %}{{- '\n' }}{%- endif %}{%- endfor %}"
                    "{%- if add_generation_prompt %}{{- '<|assistant|>\n' }}{%- endif %}")
    return path


def test_tool_turns_only_with_a_template_that_renders_them(world, tmp_path, no_tool_template):
    from sftlib.data import create_prompt_dataset
    from sftlib.data.messages import load_chat_template
    from sftlib.model import load_hf_tokenizer

    rows = chat_rows(world, 12)
    rows[6]["messages"][1:1] = [{"role": "tool", "content": "lookup: Paqura"}]
    path = write_jsonl(tmp_path / "chats.jsonl", rows)
    tok = load_hf_tokenizer(str(world["opt"]))
    load_chat_template(tok, world["chat"] / "chat_template.jinja")  # renders every role as <|role|>
    both = create_prompt_dataset(0, [f"messages={path}"], "10,0,0", str(tmp_path / "c"), 1, 1234, tok, 128)
    assert any("lookup: Paqura" in tok.decode(s[i]["input_ids"]) for s in both for i in range(len(s)))
    load_chat_template(tok, no_tool_template)
    with pytest.raises(SFTError, match=r"chats.jsonl:7: messages\[1\] has the role 'tool', which the chat template "
                                       r"does not render"):
        create_prompt_dataset(0, [f"messages={path}"], "10,0,0", str(tmp_path / "c"), 1, 1234, tok, 128)
    refusing = tmp_path / "refusing.jinja"  # a template that raises on a tool turn
    refusing.write_text("{%- for m in messages %}{%- if m['role'] == 'tool' %}{{ raise_exception('no tool turns') }}"
                        "{%- endif %}{{- m['content'] + eos_token }}{%- endfor %}")
    load_chat_template(tok, refusing)
    with pytest.raises(SFTError, match=r"chats.jsonl:7: the chat template cannot render this row's tool turn "
                                       r"\(no tool turns\)"):
        create_prompt_dataset(0, [f"messages={path}"], "10,0,0", str(tmp_path / "c"), 1, 1234, tok, 128)


if __name__ == "__main__":  # the table: input, what happens, traceback or not
    import os
    import tempfile

    from tests.helpers import ROOT

    sys.path.insert(0, ROOT)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sftlib.lessons.toy import ensure_toy_world

    world = ensure_toy_world(("opt",), chat=True)
    print("| # | input (1 epoch, --max_seq_len 128) | what happens | traceback | empty split cached |\n"
          "|---|---|---|---|---|")
    for i, (case, make, expected) in enumerate(CASES, 1):
        tmp = Path(tempfile.mkdtemp())
        code, err, out, history = attempt(world, tmp, make)
        if code == 0 and history is not None:
            what = (f"finished: {history.train_samples} train / {history.eval_samples} eval rows, "
                    f"{len(history['loss'])} step(s), {len(history['eval'])} evaluations")
        else:
            lines = [line for line in err.splitlines() if line.startswith("error: ")]
            what = f"exit {code}: `{' / '.join(lines).replace(str(tmp), '<tmp>')}`"
        ok = "as expected" if (expected == RUN) == (code == 0) else "UNEXPECTED"
        print(f"| {i} | {case} | {what} ({ok}) | {'yes' if 'Traceback' in err + out else 'none'} | "
              f"{', '.join(empty_splits(tmp / 'cache')) or 'none'} |")
