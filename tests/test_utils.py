"""sftlib.utils: DeepSpeed-Chat's dschat/utils/utils.py names (ranks, seeds, optimizer groups, moving
averages, the HF-format save), each against real behaviour, read from sftlib.utils as notebook 02 reads them."""

import json
import os
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sftlib import history, optim, rng, save, utils, zero
from sftlib.dist import free_port
from sftlib.errors import SFTError
from tests.helpers import run_cli


def load(world, kind):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(world[kind], dtype=torch.float32)


def names_by_group(model, groups):
    return {i: {r["name"] for r in utils.describe_optimizer_groups(model, groups) if r["group"] == i}
            for i in range(len(groups))}


def is_norm(module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")


def expected_no_decay(model) -> set:
    """Independent of substrings: every bias, and the weight of every LayerNorm / RMSNorm module."""
    out = {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    for mod_name, module in model.named_modules():
        if is_norm(module):
            out.add(f"{mod_name}.weight")
    return out


# ---------------------------------------------------------------- optimizer groups

@pytest.mark.parametrize("kind, decayed, not_decayed", [
    ("opt", ["model.decoder.embed_tokens.weight", "model.decoder.embed_positions.weight",
             "model.decoder.layers.0.self_attn.q_proj.weight", "model.decoder.layers.3.fc2.weight"],
     ["model.decoder.layers.0.self_attn.q_proj.bias", "model.decoder.layers.0.self_attn_layer_norm.weight",
      "model.decoder.layers.0.final_layer_norm.bias", "model.decoder.final_layer_norm.weight"]),
    ("llama", ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
               "model.layers.1.mlp.gate_proj.weight", "lm_head.weight"],
     ["model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
      "model.norm.weight"]),
])
def test_optimizer_groups_follow_substring_rules(world, kind, decayed, not_decayed):
    model = load(world, kind)
    groups = utils.get_optimizer_grouped_parameters(model, weight_decay=0.1, lora_lr=5e-4)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0], "no LoRA: the empty LoRA group is dropped"
    by_group = names_by_group(model, groups)
    assert set(decayed) <= by_group[0] and set(not_decayed) <= by_group[1]
    assert by_group[1] == expected_no_decay(model), "no-decay = every bias and every norm weight, nothing else"
    assert by_group[0] | by_group[1] == {n for n, _ in model.named_parameters()}
    assert not by_group[0] & by_group[1]


def test_lora_group_gets_its_own_lr_and_frozen_weights_are_left_out(world):
    from sftlib.lora import convert_linear_layer_to_lora, only_optimize_lora_parameters

    model = convert_linear_layer_to_lora(load(world, "opt"), "decoder.layers.", 4)
    groups = utils.get_optimizer_grouped_parameters(model, weight_decay=0.1, lora_lr=5e-4)
    assert [(g["weight_decay"], g.get("lr")) for g in groups] == [(0.1, None), (0.1, 5e-4), (0.0, None)]
    by_group = names_by_group(model, groups)
    lora = {n for n, _ in model.named_parameters() if "lora_" in n}
    assert by_group[1] == lora and len(lora) == 4 * 6 * 2, "4 layers x 6 Linear x (right, left)"
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "model.decoder.layers.0.fc1.weight" in frozen and not frozen & set().union(*by_group.values())

    groups = utils.get_optimizer_grouped_parameters(only_optimize_lora_parameters(model), 0.1, 5e-4)
    assert len(groups) == 1 and groups[0]["lr"] == 5e-4, "only-LoRA: one group"


# ---------------------------------------------------------------- ranks

@pytest.mark.slow
def test_all_reduce_mean_over_two_gloo_ranks_is_the_true_mean(tmp_path):
    out = tmp_path / "ranks"
    proc = run_cli([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                    "--master-port", str(free_port()), "-m", "sftlib.lessons.two_ranks", "--out", str(out)],
                   timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    losses = [r["loss"] for r in reports]
    assert losses[0] != losses[1]
    for r in reports:
        assert r["world_size"] == 2
        assert r["mean"] == pytest.approx(sum(losses) / 2, abs=1e-6)
        assert r["input_after"] == r["loss"], "the caller's tensor is left alone"
        assert r["dschat_input_after"] == pytest.approx(sum(losses)), "the original's in-place trap"
    assert proc.stdout.count("plain print") == 2
    assert proc.stdout.count("print_rank_0: mean loss over 2 ranks") == 1


def test_single_process_helpers(capsys):
    import torch.distributed as dist

    t = torch.tensor([3.0])
    if dist.is_initialized():  # an earlier in-process training run left its one-rank group
        assert dist.get_world_size() == 1 and torch.equal(utils.get_all_reduce_mean(t), t)
    else:
        assert utils.get_all_reduce_mean(t) is t, "no process group: unchanged"
    utils.print_rank_0("shown")
    utils.print_rank_0("hidden", rank=1)
    utils.print_rank_0("shown too", rank=-1)
    assert capsys.readouterr().out == "shown\nshown too\n"
    batch = utils.to_device({"input_ids": torch.ones(2, dtype=torch.long), "text": ["a"]}, "cpu")
    assert batch["text"] == ["a"] and batch["input_ids"].device.type == "cpu"


def test_deepspeed_chats_names_are_the_library_s_own_objects():
    """utils defines the rank helpers; every other dschat/utils/utils.py name is the object of its home module."""
    homes = {"set_random_seed": rng, "get_optimizer_grouped_parameters": optim, "MovingAverage": history,
             "ExponentialMovingAverage": history, "save_hf_format": save, "save_zero_three_model": zero}
    assert all(getattr(utils, name) is getattr(home, name) for name, home in homes.items())
    assert {f.__module__ for f in (utils.print_rank_0, utils.to_device, utils.get_all_reduce_mean)} == {"sftlib.utils"}


def test_moving_averages():
    ma, ema = utils.MovingAverage(), utils.ExponentialMovingAverage(alpha=0.5)
    assert ema.get() == 0.0
    for x in (1.0, 2.0, 6.0):
        ma.update(x)
        ema.update(x)
    assert ma.mean == 3.0 and ema.get() == 0.5 * (0.5 * 1.0 + 0.5 * 2.0) + 0.5 * 6.0


# ---------------------------------------------------------------- seeds

def seeded_losses(world, seed, steps=3):
    import random

    import numpy as np
    from transformers import AutoModelForCausalLM

    from sftlib.lora import convert_linear_layer_to_lora
    from sftlib.model import create_hf_model, load_hf_tokenizer

    utils.set_random_seed(seed)
    tok = load_hf_tokenizer(str(world["opt"]))
    model = create_hf_model(AutoModelForCausalLM, str(world["opt"]), tok, dropout=0.2)
    model = convert_linear_layer_to_lora(model, "decoder.layers.", 4)  # random (Kaiming) init
    model.train()
    opt = torch.optim.AdamW(utils.get_optimizer_grouped_parameters(model, 0.01, 1e-3), lr=1e-3)
    losses = []
    for _ in range(steps):
        ids = torch.randint(4, len(tok), (4, 16))
        ids[:, random.randrange(16)] = int(np.random.randint(4, 100))  # python and numpy draws too
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def test_two_seeded_runs_give_identical_losses(world):
    first, second = seeded_losses(world, 1234), seeded_losses(world, 1234)
    assert first == second, "bit-identical, not merely close"
    assert seeded_losses(world, 4321) != first, "and the seed matters"


# ---------------------------------------------------------------- saving

def opt_and_tokenizer(world):
    from transformers import AutoModelForCausalLM

    from sftlib.model import create_hf_model, load_hf_tokenizer

    tok = load_hf_tokenizer(str(world["opt"]), add_special_tokens="<|endoftext|>")
    return create_hf_model(AutoModelForCausalLM, str(world["opt"]), tok), tok


def test_save_hf_format_reloads_with_identical_logits(world, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = opt_and_tokenizer(world)
    with torch.no_grad():  # make the saved weights differ from the base model's
        model.model.decoder.layers[0].fc1.weight.mul_(1.5)
    utils.save_hf_format(model, tok, SimpleNamespace(output_dir=str(tmp_path / "out")))
    names = set(os.listdir(tmp_path / "out"))
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", save.SAVE_MARKER} <= names
    assert not any(n.endswith(".bin") for n in names) and not any(n.startswith(".") for n in os.listdir(tmp_path))

    back_tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert len(back_tok) == len(tok) and back_tok.pad_token == tok.pad_token == tok.eos_token
    text = "\n\nHuman: hello<|endoftext|>"
    assert back_tok(text).input_ids == tok(text).input_ids, "the added special token survived"
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    ids = torch.tensor([tok(text).input_ids])
    model.eval()
    with torch.no_grad():
        diff = (model(input_ids=ids).logits - back(input_ids=ids).logits).abs().max().item()
    assert diff == 0.0


def test_save_refuses_foreign_folder_and_replaces_previous_save_atomically(world, tmp_path):
    model, tok = opt_and_tokenizer(world)
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("keep me")
    with pytest.raises(SFTError, match="not empty and is not a previous save"):
        utils.save_hf_format(model, tok, SimpleNamespace(output_dir=str(foreign)))
    assert os.listdir(foreign) == ["todo.txt"]

    args = SimpleNamespace(output_dir=str(tmp_path / "out"))
    utils.save_hf_format(model, tok, args)
    before = (tmp_path / "out" / "model.safetensors").read_bytes()

    class Boom(RuntimeError):
        pass

    def crash(*a, **k):
        raise Boom("disk full")

    tok.save_pretrained = crash  # fails half-way through the second save
    with pytest.raises(Boom):
        utils.save_hf_format(model, tok, args)
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == before, "previous save intact"
    assert sorted(os.listdir(tmp_path)) == ["notes", "out"], "no temporary folder left"


def test_previous_save_means_marker_or_config_plus_weights(tmp_path):
    hf = tmp_path / "hf"  # e.g. a save made by the original DeepSpeed-Chat
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "pytorch_model.bin").write_bytes(b"")
    save.check_output_dir(hf)
    (hf / "pytorch_model.bin").unlink()
    (hf / "notes.txt").write_text("x")
    with pytest.raises(SFTError, match="not a previous save"):
        save.check_output_dir(hf)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SFTError, match="is a file"):
        save.check_output_dir(tmp_path / "file")
    save.check_output_dir(tmp_path / "new")  # missing: fine


def test_save_refuses_unfused_lora(world, tmp_path):
    from sftlib.lora import convert_linear_layer_to_lora

    model, tok = opt_and_tokenizer(world)
    model = convert_linear_layer_to_lora(model, "decoder.layers.", 4)
    with pytest.raises(SFTError, match="not fused"):
        utils.save_hf_format(model, tok, SimpleNamespace(output_dir=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()
