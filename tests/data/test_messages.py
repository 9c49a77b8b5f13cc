"""messages data: chats rendered with the chat template, labels on the assistant turns only."""

import json
import re

import pytest
import torch

from sftlib.constants import IGNORE_INDEX
from sftlib.data import create_prompt_dataset, resolve_data_path
from sftlib.data.messages import assistant_char_spans, chat_template_of, encode_conversations, load_chat_template
from sftlib.errors import SFTError

THREE_TURNS = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome, on the Tiber."},
    {"role": "user", "content": "Which of the two is bigger?"},
    {"role": "assistant", "content": "Paris has more people."},
]


@pytest.fixture(scope="module")
def toy_chat_tok(world):
    from sftlib.model import load_hf_tokenizer

    tok = load_hf_tokenizer(str(world["opt"]))
    load_chat_template(tok, world["chat"] / "chat_template.jinja")
    return tok


@pytest.fixture(scope="module")
def smol_tok():
    from sftlib.gguf_import import ensure_smollm2
    from sftlib.model import load_hf_tokenizer

    try:
        folder = ensure_smollm2()
    except SFTError as err:
        pytest.skip(f"SmolLM2 cannot be imported here: {err}")
    return load_hf_tokenizer(str(folder))


def labelled_text(tok, conv, max_seq_len=512):
    enc = encode_conversations(tok, [conv], max_seq_len)
    ids, mask = enc["input_ids"][0], enc["label_mask"][0]
    return tok.decode([i for i, m in zip(ids, mask) if m]), enc


def expected_text(tok, conv):
    return "".join(m["content"] + tok.eos_token for m in conv if m["role"] == "assistant")


def test_toy_template_labels_exactly_the_assistant_turns(toy_chat_tok):
    text, enc = labelled_text(toy_chat_tok, THREE_TURNS)
    assert text == expected_text(toy_chat_tok, THREE_TURNS)  # "Paris.</s>Rome, on the Tiber.</s>Paris has..."
    # the oracle: transformers' own assistant mask from the template's {% generation %} blocks
    ref = toy_chat_tok.apply_chat_template(THREE_TURNS, tokenize=True, return_dict=True,
                                           return_assistant_tokens_mask=True)
    assert enc["input_ids"][0] == list(ref["input_ids"]) and enc["label_mask"][0] == list(ref["assistant_masks"])
    # and the prefix-rendering path (used for templates without {% generation %}) agrees with it
    plain = chat_template_of(toy_chat_tok).replace("{% generation %}", "").replace("{% endgeneration %}", "")
    assert encode_conversations(toy_chat_tok, [THREE_TURNS], 512, template=plain)["label_mask"] == enc["label_mask"]


def test_smollm2_template_labels_exactly_the_assistant_turns(smol_tok):
    assert "{% generation %}" not in chat_template_of(smol_tok)  # so the prefix-rendering path runs
    text, enc = labelled_text(smol_tok, THREE_TURNS)
    assert smol_tok.eos_token == "<|im_end|>"
    assert text == expected_text(smol_tok, THREE_TURNS)
    n_eot = sum(1 for i, m in zip(enc["input_ids"][0], enc["label_mask"][0]) if m and i == smol_tok.eos_token_id)
    assert n_eot == 3  # each assistant turn's <|im_end|>, and no other turn's
    rendered, spans = assistant_char_spans(smol_tok, THREE_TURNS)
    assert [rendered[a:b] for a, b in spans] == [m["content"] + "<|im_end|>" for m in THREE_TURNS if
                                                  m["role"] == "assistant"]


def test_messages_dataset_is_cached_with_the_template_and_masks_labels(tmp_path, world, toy_chat_tok):
    resolved = resolve_data_path(str(world["chat"]))
    assert resolved.spec.kind == "messages" and resolved.source == str(world["chat"])  # a bare folder of chats
    train, evals = create_prompt_dataset(0, [f"messages={world['chat']}"], "10,0,0", str(tmp_path), 1, 1234,
                                         toy_chat_tok, 128, batching="compat")
    rows = [json.loads(line) for line in open(world["chat"] / "train.json")]
    assert len(train) == len(rows) and len(evals) > 0
    sample = train[0]
    labelled = sample["labels"][sample["labels"] != IGNORE_INDEX]
    assert toy_chat_tok.eos_token_id in labelled.tolist()
    assert torch.equal(sample["input_ids"][sample["labels"] != IGNORE_INDEX], labelled)
    decoded = toy_chat_tok.decode(labelled)
    assert any(decoded == expected_text(toy_chat_tok, r["messages"]) for r in rows)
    # another template gives another cache
    before = sorted(p.name for p in tmp_path.glob("prompt_dataset_*") if p.is_dir())
    toy_chat_tok.chat_template = chat_template_of(toy_chat_tok) + "{# another template #}"
    try:
        create_prompt_dataset(0, [f"messages={world['chat']}"], "10,0,0", str(tmp_path), 1, 1234, toy_chat_tok, 128)
    finally:
        load_chat_template(toy_chat_tok, world["chat"] / "chat_template.jinja")
    assert len([p for p in tmp_path.glob("prompt_dataset_*") if p.is_dir()]) == len(before) + 1


def test_a_tokenizer_without_a_template_names_the_flag(tmp_path, world):
    from sftlib.model import load_hf_tokenizer

    tok = load_hf_tokenizer(str(world["opt"]))
    with pytest.raises(SFTError, match="--chat_template FILE"):
        create_prompt_dataset(0, [f"messages={world['chat']}"], "10,0,0", str(tmp_path), 1, 1234, tok, 64)


MALFORMED = [  # (case, the bad row's messages, what the error says)
    ("empty list", [], "'messages' must be a non-empty list of {role, content} objects"),
    ("a string", "Hi, who are you?", "'messages' must be a non-empty list"),
    ("an object", {"role": "user", "content": "Hi"}, "'messages' must be a non-empty list"),
    ("null", None, "'messages' must be a non-empty list"),
    ("no content", [{"role": "user"}], "messages[0] needs a string 'role' and a string 'content'"),
    ("no role", [{"content": "Hi"}], "messages[0] needs a string 'role' and a string 'content'"),
    ("role a number", [{"role": 1, "content": "Hi"}], "messages[0] needs a string 'role'"),
    ("turn a string", [{"role": "user", "content": "Hi"}, "assistant: Hello"], "messages[1] needs a string 'role'"),
    ("content a list", [{"role": "user", "content": ["Hi"]}, {"role": "assistant", "content": "Hello"}],
     "messages[0] needs a string 'role' and a string 'content'"),
    ("unknown role", [{"role": "user", "content": "Hi"}, {"role": "robot", "content": "Beep"}],
     "messages[1] has the role 'robot'; a turn's role is system, user, assistant or tool"),
]


def chats_with_a_bad_row(world, folder, layout, messages, bad=12):
    """20 of the toy chats with row ``bad`` (0-based) replaced, as json lines or as an indented json list;
    returns the file and the line the bad row starts on."""
    rows = [json.loads(line) for line in (world["chat"] / "train.json").read_text().splitlines()[:20]]
    rows[bad] = {"messages": messages}
    path = folder / f"chats.{layout}"
    if layout == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path, bad + 1
    path.write_text(json.dumps(rows, indent=1))
    starts = [i for i, line in enumerate(path.read_text().splitlines(), start=1) if line == " {"]
    return path, starts[bad]


@pytest.mark.parametrize("layout", ["jsonl", "json"])
@pytest.mark.parametrize("case, messages, message", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_a_malformed_messages_row_is_one_line_naming_file_and_line(world, toy_chat_tok, tmp_path, capsys, layout,
                                                                   case, messages, message):
    """As a bad json line: ``error: FILE:LINE: ...``, exit 2, no traceback, nothing written (the command
    line), and the same line from the library, before its output folder exists."""
    from sftlib import cli, train

    path, line = chats_with_a_bad_row(world, tmp_path, layout, messages)
    argv = ["--model_name_or_path", str(world["opt"]), "--data_path", f"messages={path}", "--chat_template",
            str(world["chat"] / "chat_template.jinja"), "--data_split", "10,0,0", "--max_seq_len", "64",
            "--dtype", "fp32", "--data_output_path", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "out")]
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as info:
        cli.run(train.main, argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert info.value.code == 2 and "Traceback" not in captured.err + captured.out
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}:{line}: {message}"), captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "nothing written"
    with pytest.raises(SFTError, match="^" + re.escape(f"{path}:{line}: {message}")):
        create_prompt_dataset(0, [f"messages={path}"], "10,0,0", str(tmp_path / "lib"), 1, 1234, toy_chat_tok, 64)
    assert not (tmp_path / "lib").exists()
