"""sftlib.data.tokenize: the batched path gives exactly the tensors of DeepSpeed-Chat's one-at-a-time recipe."""

import pytest
import torch

from sftlib import data
from tests.data.helpers import numpy_recipe, toy_folder


def test_compat_tensors_equal_one_at_a_time_on_2000_rows(world, tok, tmp_path):
    folder, rows = toy_folder(world, tmp_path, 2000)
    max_len = 24  # short enough that some samples are truncated (their EOS is cut, as in the original)
    with pytest.warns(UserWarning, match=r"samples are longer than max_seq_len=24"):
        train, _ = data.create_prompt_dataset(0, [str(folder)], "10,0,0", str(tmp_path / "cache"), 1, 1234, tok,
                                              max_len, end_of_conversation_token=tok.eos_token)
    order = numpy_recipe(1234, "10,0,0", 2000)[0]
    texts = [rows[i]["prompt"] + rows[i]["chosen"] + tok.eos_token for i in order]
    want = data.tokenize_one_at_a_time(texts, tok, max_len)
    assert len(train) == 2000
    for i in range(2000):
        got = train[i]
        assert torch.equal(got["input_ids"], want[i]["input_ids"]), i
        assert torch.equal(got["attention_mask"], want[i]["attention_mask"]), i
        labels = want[i]["input_ids"].masked_fill(want[i]["attention_mask"] == 0, -100)
        assert torch.equal(got["labels"], labels) and got["input_ids"].dtype == torch.long


def test_phases_2_and_3_match_the_original_shapes(world, tok, tmp_path):
    folder, rows = toy_folder(world, tmp_path, 50)
    pairs, _ = data.create_prompt_dataset(0, [str(folder)], "2,4,4", str(tmp_path / "c"), 2, 7, tok, 32,
                                          end_of_conversation_token=tok.eos_token)
    part = numpy_recipe(7, "2,4,4", 50)[1]
    assert len(pairs) == len(part)
    c_ids, c_mask, r_ids, r_mask = pairs[0]
    want_c = tok(rows[part[0]]["prompt"] + rows[part[0]]["chosen"] + tok.eos_token, max_length=32,
                 padding="max_length", truncation=True, return_tensors="pt")
    want_r = tok(rows[part[0]]["prompt"] + rows[part[0]]["rejected"] + tok.eos_token, max_length=32,
                 padding="max_length", truncation=True, return_tensors="pt")
    assert torch.equal(c_ids, want_c["input_ids"]) and torch.equal(c_mask, want_c["attention_mask"])
    assert torch.equal(r_ids, want_r["input_ids"]) and torch.equal(r_mask, want_r["attention_mask"])
    prompts, _ = data.create_prompt_dataset(0, [str(folder)], "2,4,4", str(tmp_path / "c"), 3, 7, tok, 32,
                                            end_of_conversation_token=tok.eos_token)
    part3 = numpy_recipe(7, "2,4,4", 50)[2]
    ids, mask, pad = prompts[0]
    want = tok(rows[part3[0]]["prompt"], return_tensors="pt")["input_ids"][0]
    assert torch.equal(ids, want.flip(0)) and int(mask.sum()) == len(want) and pad == tok.pad_token_id


def test_worker_processes_give_the_one_process_table(world, tok, tmp_path):
    """Several ``CHUNK_ROWS`` chunks tokenized by two worker processes: the same Arrow rows, in order, as one
    process, and the original's tensors."""
    from sftlib.data.tokenize import CHUNK_ROWS, tokenize_split

    folder, rows = toy_folder(world, tmp_path, 2 * CHUNK_ROWS + 100)
    raw = data.get_raw_dataset(str(folder), str(tmp_path / "idx"), 1, 0)
    train = raw.get_train_data()
    one = tokenize_split(train, raw, 1, tok, tok.eos_token, 32, num_proc=1)
    two = tokenize_split(train, raw, 1, tok, tok.eos_token, 32, num_proc=2)
    assert len(one) == len(rows) and one.data.table.equals(two.data.table)
    want = data.tokenize_one_at_a_time([r["prompt"] + r["chosen"] + tok.eos_token for r in rows[-50:]], tok, 32)
    for got, expected in zip(two["input_ids"][-50:], want):
        assert got == expected["input_ids"][expected["attention_mask"].bool()].tolist()
