"""sftlib.data.prompt_dataset: the opt-in ways of reading samples (masked prompt, dynamic padding, packing)."""

import torch

from sftlib import collate, data
from tests.data.helpers import numpy_recipe


def test_mask_prompt_labels_only_the_response(world, tok, tmp_path):
    train, _ = data.create_prompt_dataset(0, [str(world["data"])], "10,0,0", str(tmp_path), 1, 1234, tok, 64,
                                          end_of_conversation_token=tok.eos_token, mask_prompt=True)
    rows = data.read_json_rows(world["data"] / "train.json")
    first = rows[int(numpy_recipe(1234, "10,0,0", len(rows))[0][0])]
    s = train[0]
    kept = s["labels"][s["labels"] != -100]
    assert tok.decode(kept) == first["chosen"] + tok.eos_token
    assert int((s["labels"] != -100).sum()) < int(s["attention_mask"].sum())


def test_dynamic_padding_pads_to_a_multiple_of_8_and_keeps_content(world, tok, tmp_path):
    kw = dict(end_of_conversation_token=tok.eos_token)
    compat, _ = data.create_prompt_dataset(0, [str(world["data"])], "10,0,0", str(tmp_path), 1, 1, tok, 64, **kw)
    dyn, _ = data.create_prompt_dataset(0, [str(world["data"])], "10,0,0", str(tmp_path), 1, 1, tok, 64,
                                        batching="dynamic", **kw)
    batch = collate.DynamicPaddingCollator(tok.pad_token_id)([dyn[i] for i in range(16)])
    longest = max(int(compat[i]["attention_mask"].sum()) for i in range(16))
    assert batch["input_ids"].shape == (16, -(-longest // 8) * 8) and batch["input_ids"].shape[1] < 64
    width = batch["input_ids"].shape[1]
    for i in range(16):
        assert torch.equal(batch["input_ids"][i], compat[i]["input_ids"][:width])
        assert torch.equal(batch["labels"][i], compat[i]["labels"][:width])


def test_packing_keeps_attention_inside_each_sample(world, tok, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(world["opt"])).eval()
    dyn, _ = data.create_prompt_dataset(0, [str(world["data"])], "10,0,0", str(tmp_path), 1, 1, tok, 64,
                                        end_of_conversation_token=tok.eos_token, batching="packing")
    packed = collate.PackedDataset(dyn, 64)
    assert len(packed) < len(dyn) and len(packed.bins[0]) >= 2
    batch = collate.PackingCollator(tok.pad_token_id)([packed[0], packed[1]])
    assert batch.pop("num_tokens") == sum(len(packed[i]["input_ids"]) for i in (0, 1))
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        start = 0
        for j in packed.bins[0]:
            ids = dyn[j]["input_ids"][None]
            alone = model(input_ids=ids).logits[0]
            n = ids.shape[1]
            assert torch.allclose(logits[0, start:start + n], alone, atol=1e-4), "a sample saw its neighbour"
            assert batch["labels"][0, start] == -100
            start += n


def test_labels_2023_are_the_input_ids_padding_included(world, tok, tmp_path):
    """--labels_2023: the 2023 recipe (one tokenizer call per sample, padded, labels = input_ids)."""
    import pytest

    from sftlib.errors import SFTError
    from sftlib.train import parse_args

    assert parse_args(["--model_name_or_path", "x", "--labels_2023"]).labels_2023
    assert not parse_args(["--model_name_or_path", "x"]).labels_2023, "off by default"
    kw = dict(end_of_conversation_token=tok.eos_token)
    old, old_eval = data.create_prompt_dataset(0, [str(world["data"])], "10,0,0", str(tmp_path), 1, 1234, tok, 64,
                                               labels_2023=True, **kw)
    rows = data.read_json_rows(world["data"] / "train.json")
    for i, j in enumerate(numpy_recipe(1234, "10,0,0", len(rows))[0][:4]):
        text = rows[int(j)]["prompt"] + rows[int(j)]["chosen"] + tok.eos_token
        theirs = tok(text, max_length=64, padding="max_length", truncation=True, return_tensors="pt")["input_ids"][0]
        s = old[i]
        assert torch.equal(s["input_ids"], theirs) and torch.equal(s["labels"], theirs)
        assert int(s["attention_mask"].sum()) < 64 and (s["labels"][s["attention_mask"] == 0] == tok.pad_token_id).all()
    assert torch.equal(old_eval[0]["labels"], old_eval[0]["input_ids"]), "the 2023 eval perplexity counted padding too"
    today, _ = data.create_prompt_dataset(0, [str(world["data"])], "10,0,0", str(tmp_path), 1, 1234, tok, 64, **kw)
    assert (today[0]["labels"] == -100).any() and not (old[0]["labels"] == -100).any()
    for extra in ({"mask_prompt": True}, {"batching": "dynamic"}, {"batching": "packing"}):
        with pytest.raises(SFTError, match="--labels_2023"):
            data.create_prompt_dataset(0, [str(world["data"])], "10,0,0", str(tmp_path), 1, 1234, tok, 64,
                                       labels_2023=True, **kw, **extra)
