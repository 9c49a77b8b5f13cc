"""The token-by-token label view: its classification (from the stored rows) against the labels of each mode."""

import json

import pytest
import torch

from sftlib import collate
from sftlib.constants import IGNORE_INDEX
from sftlib.data import create_prompt_dataset
from sftlib.lessons.label_view import KINDS, classify, loss_matches_labels, view_row

MAX_SEQ_LEN = 64


@pytest.fixture(scope="module")
def tok(world):
    from sftlib.model import load_hf_tokenizer

    return load_hf_tokenizer(str(world["opt"]))


@pytest.fixture(scope="module")
def build(world, tok, tmp_path_factory):
    out = tmp_path_factory.mktemp("label_view")

    def make(**kw):
        train, _ = create_prompt_dataset(0, [str(world["data"])], "2,4,4", str(out), 1, 1234, tok, MAX_SEQ_LEN,
                                         end_of_conversation_token=tok.eos_token, **kw)
        return train
    return make


def collated_labels(dataset, index, tok):
    kind = "compat" if dataset.pad_to_max_len else "dynamic"
    return collate.make_collator(kind, tok.pad_token_id, dataset.max_seq_len)([dataset[index]])["labels"][0]


def test_todays_labels_train_every_real_token_and_no_padding(build, tok):
    train = build()
    for i in range(5):
        view = view_row(train, i, tok)
        assert loss_matches_labels(view, train[i]["labels"])
        assert len(view.tokens) == MAX_SEQ_LEN and view.samples == 1
        assert view.tokens[0].kind == "bos" and not view.tokens[0].loss  # position 0 is never predicted
        assert view.count("pad") == MAX_SEQ_LEN - int(train[i]["attention_mask"].sum()) > 0
        assert view.count("pad", loss=True) == 0
        assert all(t.loss for t in view.tokens[1:] if t.kind != "pad")  # the prompt too
        assert view.count("eos") == 1 and view.count("response") >= 1
        real = [t for t in view.tokens if t.kind != "pad"]
        assert real[-1].kind == "eos" and real[-1].token_id == tok.eos_token_id


def test_labels_2023_train_the_padding(build, tok):
    train = build(train_on_padding=True)
    view = view_row(train, 0, tok, title="--labels_2023")
    assert torch.equal(train[0]["labels"], train[0]["input_ids"])
    assert loss_matches_labels(view, train[0]["labels"])
    assert view.count("pad") > 0 and view.count("pad", loss=False) == 0
    assert {t.token_id for t in view.tokens if t.kind == "pad"} == {tok.pad_token_id}


def test_mask_prompt_trains_the_response_and_eos_only(build, tok):
    train = build(mask_prompt=True)
    for i in range(5):
        view = view_row(train, i, tok)
        assert loss_matches_labels(view, train[i]["labels"])
        assert view.count(part="prompt", loss=True) == 0
        assert view.count(part="response") == view.count(part="response", loss=True) > 0
        trained = [t.token_id for t in view.tokens if t.loss]
        assert tok.decode(trained).endswith(tok.eos_token)


def test_dynamic_padding_row_is_a_multiple_of_8(build, tok):
    train = build(pad_to_max_len=False)
    view = view_row(train, 0, tok)
    assert len(view.tokens) % 8 == 0 and len(view.tokens) < MAX_SEQ_LEN
    assert loss_matches_labels(view, collated_labels(train, 0, tok))
    assert view.count("pad", loss=True) == 0


def test_packing_restarts_positions_and_never_trains_a_sample_start(build, tok):
    unpadded = build(pad_to_max_len=False)
    packed = collate.PackedDataset(unpadded, MAX_SEQ_LEN)
    view = view_row(packed, 0, tok)
    batch = collate.make_collator("packing", tok.pad_token_id, packing="mask")([packed[0]])
    assert loss_matches_labels(view, batch["labels"][0])
    assert view.samples == len(packed.bins[0]) >= 2
    starts = [t for t in view.tokens if t.sample >= 0 and t.position == 0]
    assert len(starts) == view.samples and all(t.kind == "bos" and not t.loss for t in starts)
    for s, j in enumerate(packed.bins[0]):
        mine = [t for t in view.tokens if t.sample == s]
        assert [t.position for t in mine] == list(range(len(mine)))
        assert [t.token_id for t in mine] == unpadded[j]["input_ids"][:len(mine)].tolist()
        assert mine[-1].kind == "eos" and mine[-1].loss
    assert view.count("pad", loss=True) == 0


def test_messages_rows_train_the_assistant_turns_only(world, tok, tmp_path):
    from sftlib.data.messages import load_chat_template
    from sftlib.model import load_hf_tokenizer

    chat_tok = load_hf_tokenizer(str(world["opt"]))
    load_chat_template(chat_tok, world["chat"] / "chat_template.jinja")
    train, _ = create_prompt_dataset(0, [f"messages={world['chat']}"], "10,0,0", str(tmp_path), 1, 1234, chat_tok,
                                     256, pad_to_max_len=False)
    rows = [json.loads(line)["messages"] for line in open(world["chat"] / "train.json")]
    expected = {"".join(m["content"] + chat_tok.eos_token for m in r if m["role"] == "assistant") for r in rows}
    for i in range(4):
        view = view_row(train, i, chat_tok)
        assert loss_matches_labels(view, collated_labels(train, i, chat_tok))
        assert all(t.loss == (t.part == "response") for t in view.tokens)
        assert chat_tok.decode([t.token_id for t in view.tokens if t.loss]) in expected
        eos = [t for t in view.tokens if t.kind == "eos"]
        assert any(t.loss for t in eos) and any(not t.loss for t in eos)  # assistant turns' EOS vs the user's


def test_kinds_come_from_the_stored_rows_not_from_the_labels(build, tok):
    train = build()
    s = train[0]
    n = int(s["attention_mask"].sum())
    info = {"prompt_tokens": train.table[0]["prompt_tokens"], "label_mask": None}
    a = classify(s["input_ids"], s["labels"], [(0, n, info)], tok)
    b = classify(s["input_ids"], torch.full_like(s["labels"], IGNORE_INDEX), [(0, n, info)], tok)
    assert [t.kind for t in a.tokens] == [t.kind for t in b.tokens]
    assert b.count(loss=True) == 0 and a.count(loss=True) == n - 1


def test_renderings_are_compact(build, tok):
    view = view_row(build(), 0, tok, title="today")
    assert "\n" not in repr(view) and repr(view).startswith("today:")
    page = view._repr_html_()
    assert page.count("<span title=") == len(view.tokens) and all(k in page for k in KINDS)
    text = view.text(width=80).splitlines()
    assert all(len(line) <= 80 + 12 for line in text[1:])
    assert text[1].startswith("token") and text[2].startswith("kind") and text[3].startswith("loss")
