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
                                        pad_to_max_len=False, **kw)
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
                                        end_of_conversation_token=tok.eos_token, pad_to_max_len=False)
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
