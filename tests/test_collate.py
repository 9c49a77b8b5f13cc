"""sftlib.collate: packing layouts (4-D mask, padding-free, flattened) against unpacked rows, on the toy models."""

import pytest
import torch

from sftlib import collate, data
from sftlib.constants import IGNORE_INDEX
from sftlib.errors import SFTError


@pytest.fixture(scope="module")
def toy(world, tmp_path_factory):
    """Per family: the model (eval: no dropout), its unpadded phase-1 set, and the packed rows."""
    from transformers import AutoModelForCausalLM

    from sftlib.model import load_hf_tokenizer

    out = {}
    for family in ("opt", "llama"):
        tok = load_hf_tokenizer(str(world[family]))
        dyn, _ = data.create_prompt_dataset(0, [str(world["data"])], "10,0,0", str(tmp_path_factory.mktemp(family)),
                                            1, 1, tok, 64, end_of_conversation_token=tok.eos_token,
                                            pad_to_max_len=False)
        model = AutoModelForCausalLM.from_pretrained(str(world[family]), attn_implementation="sdpa").eval()
        out[family] = (model, tok, dyn, collate.PackedDataset(dyn, 64))
    return out


def _unpacked_loss(model, dyn, indices) -> float:
    """Token-weighted loss of the samples run one by one: the oracle packing must reproduce."""
    total, count = 0.0, 0
    with torch.no_grad():
        for j in indices:
            s = dyn[j]
            n = int((s["labels"][1:] != IGNORE_INDEX).sum())
            total += float(model(input_ids=s["input_ids"][None], labels=s["labels"][None]).loss) * n
            count += n
    return total / count


def _packed_loss(model, batch) -> float:
    batch = dict(batch)
    batch.pop("num_tokens")
    with torch.no_grad():
        return float(model(**batch, use_cache=False).loss)


@pytest.mark.parametrize("family,mode", [("opt", "mask"), ("llama", "mask"), ("llama", "padding_free"),
                                         ("llama", "flatten")])
def test_packed_rows_give_the_loss_of_unpacked_rows(toy, family, mode):
    model, tok, dyn, packed = toy[family]
    rows = [packed[0], packed[1], packed[2]]
    batch = collate.PackingCollator(tok.pad_token_id, mode=mode)(rows)
    assert ("attention_mask" in batch) == (mode == "mask")
    if mode == "flatten":
        assert batch["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in rows))
    indices = [j for b in range(3) for j in packed.bins[b]]
    assert len(indices) >= 4
    assert _packed_loss(model, batch) == pytest.approx(_unpacked_loss(model, dyn, indices), abs=1e-5)


def test_opt_ignores_restarting_positions_so_auto_keeps_the_mask(toy):
    """OPT (transformers 5.24) builds its causal mask without position_ids: packed rows without a mask
    attend across samples. The probe sees it and auto falls back to the 4-D mask; Llama goes padding-free."""
    model, tok, dyn, packed = toy["opt"]
    rows = [packed[0], packed[1]]
    leaky = _packed_loss(model, collate.PackingCollator(tok.pad_token_id, mode="padding_free")(rows))
    assert abs(leaky - _unpacked_loss(model, dyn, packed.bins[0] + packed.bins[1])) > 1e-3
    assert collate.packing_mode("auto", model.config) == "mask"
    assert collate.packing_mode("auto", toy["llama"][0].config) == "padding_free"
    flash = type(model.config).from_dict(model.config.to_dict())
    flash._attn_implementation = "flash_attention_2"
    assert collate.packing_mode("auto", flash) == "flatten"
    assert collate.packing_mode("mask", toy["llama"][0].config) == "mask"
    with pytest.raises(SFTError, match="--packing padding_free: opt with sdpa attention ignores restarting"):
        collate.packing_mode("padding_free", model.config)


def test_bins_come_from_the_stored_arrow_lengths(toy):
    _, _, dyn, packed = toy["opt"]
    python_lengths = [len(x) for x in dyn.table["input_ids"]]
    assert collate.stored_lengths(dyn.table).tolist() == python_lengths
    assert packed.bins == collate.pack_greedy(python_lengths, 64)
    subset = dyn.table.select([5, 2, 9])  # an indices mapping: lengths follow it, not the underlying table
    assert collate.stored_lengths(subset).tolist() == [python_lengths[i] for i in (5, 2, 9)]
    with pytest.raises(ValueError, match="unknown packing mode"):
        collate.PackingCollator(0, mode="auto")


@pytest.mark.parametrize("family,flag,expected", [("llama", [], "padding_free"), ("opt", [], "mask"),
                                                  ("llama", ["mask"], "mask")])
def test_train_resolves_packing_from_the_models_attention(world, tmp_path, family, flag, expected):
    from sftlib.dist import init_distributed
    from sftlib.model import load_hf_tokenizer
    from sftlib.train import build_dataloaders, parse_args

    init_distributed()
    args = parse_args(["--model_name_or_path", str(world[family]), "--data_path", str(world["data"]),
                       "--data_split", "10,0,0", "--data_output_path", str(tmp_path), "--max_seq_len", "64",
                       "--per_device_train_batch_size", "2", "--dtype", "fp32", "--packing", *flag])
    args.local_rank = 0
    train, _ = build_dataloaders(args, load_hf_tokenizer(str(world[family])))
    batch = next(iter(train))
    assert train.collate_fn.mode == expected and ("attention_mask" in batch) == (expected == "mask")
    assert args.packing == (flag[0] if flag else "auto"), "the flag stays as given; the resolved mode is the collator's"
    assert "position_ids" in batch and isinstance(train.dataset, collate.PackedDataset)
