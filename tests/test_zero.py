"""sftlib.zero: the gathered ZeRO-3 save, atomic under SIGKILL, and the memory planner vs DeepSpeed's."""

import json
import os
import signal

import pytest
import torch
from tests.helpers import DEEPSPEED, run_cli

from sftlib import zero

# --------------------------------------------------------------------------------------------
# Memory planner
# --------------------------------------------------------------------------------------------


def test_model_specs_count_the_published_sizes():
    assert zero.model_spec("Llama-2-7B").params == 6_738_415_616
    assert zero.model_spec("OPT-1.3B").params == 1_315_758_080
    assert zero.model_spec("OPT-1.3B").largest_layer == 50272 * 2048  # the tied embedding


@pytest.mark.parametrize("name", ["OPT-1.3B", "OPT-13B", "Llama-2-70B"])
def test_planner_matches_deepspeed_estimators(name):
    spec = zero.model_spec(name)
    n, big = spec.params, spec.largest_layer
    for gpus in (1, 8):
        cases = [(2, False, False), (2, True, False), (3, True, False), (3, True, True)]
        for stage, off_opt, off_par in cases:
            ours = zero.plan_memory(n, gpus, stage, off_opt, off_par, largest_layer=big)["gpu_bytes"]
            theirs = zero.deepspeed_estimate(n, gpus, stage, off_opt, off_par, big)
            assert abs(ours / theirs - 1) < 0.05, (name, gpus, stage, off_opt, off_par, ours, theirs)
        # ZeRO-3 without offload: DeepSpeed counts 18 bytes per parameter and GPU; we count the 16-bit
        # weight partition (2) on top, and the fp32 gradient only one sub-group at a time.
        ours = zero.plan_memory(n, gpus, 3, largest_layer=big)["gpu_bytes"]
        theirs = zero.deepspeed_estimate(n, gpus, 3, largest_layer=big)
        expected = 2 * n / gpus - 4 * (n / gpus - min(1e9, n / gpus))
        assert ours - theirs == pytest.approx(expected, abs=2)
        whole = zero.plan_memory(n, gpus, 3, largest_layer=big, sub_group_size=10**15)["gpu_bytes"]
        assert whole - theirs == pytest.approx(2 * n / gpus, abs=2)


def test_planner_stages_shrink_memory_in_order():
    n = 10**9
    per_gpu = [zero.plan_memory(n, 8, stage)["gpu_bytes"] for stage in (0, 1, 2, 3)]
    assert per_gpu == sorted(per_gpu, reverse=True)
    assert per_gpu[0] == 20 * n and per_gpu[3] == pytest.approx(20 * n / 8, abs=8)


def test_gb_over_3_rule_holds_for_lora_and_not_for_full_finetuning():
    opt13 = zero.model_spec("OPT-13B")
    lora = zero.plan_recipe(opt13, "LoRA + ckpt, ZeRO-3", n_gpus=1)
    full = zero.plan_recipe(opt13, "full, ZeRO-3", n_gpus=1)
    assert zero.rule_of_thumb_billions(1, 48) >= opt13.params / 1e9  # the rule says 13B fits one 48 GB GPU
    assert zero.fits(lora, 48) and not zero.fits(full, 48)  # true with LoRA only
    # The rule's 3 bytes per parameter: 2 for the 16-bit frozen weights, about 1 for everything else.
    assert 2.0 < lora["gpu_bytes"] / opt13.params < 3.0


# --------------------------------------------------------------------------------------------
# Gathering and saving
# --------------------------------------------------------------------------------------------


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(5, 3)
        self.head = torch.nn.Linear(3, 5, bias=False)
        self.head.weight = self.emb.weight  # tied
        self.register_buffer("kept", torch.arange(3.0))
        self.register_buffer("scratch", torch.ones(2), persistent=False)
        self.lora_right_weight = torch.nn.Parameter(torch.zeros(3, 2))


def test_gather_keeps_persistent_buffers_drops_lora_and_stores_tied_weights_once():
    model = _Tiny()
    state = zero.gather_state_dict(model, 0, zero_stage=0)
    assert set(state) == {"emb.weight", "kept"}
    assert zero.tied_parameter_names(model) == {"head.weight": "emb.weight"}
    assert zero.gather_state_dict(model, 1, zero_stage=0) == {}, "only rank 0 keeps copies"


def test_zero3_one_rank_three_consolidations_agree(world, tmp_path):
    """A real ZeRO-3 engine: per-parameter gather == whole-model gather == zero_to_fp32 == the weights."""
    import deepspeed
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftlib.ds_config import get_train_ds_config
    from sftlib.train import init_distributed

    init_distributed()
    model = AutoModelForCausalLM.from_pretrained(world["opt"], dtype=torch.float32)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    config = get_train_ds_config(offload=False, dtype="fp32", stage=3)
    config.update(train_batch_size=1, train_micro_batch_size_per_gpu=1)
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()), config=config)
    assert all(hasattr(p, "ds_id") for p in engine.parameters()), "ZeRO-3 took the parameters over"
    assert any(p.numel() == 0 < p.ds_numel for p in engine.parameters()), "big ones released between uses"

    out = tmp_path / "gathered"
    zero.save_zero_three_model(engine, 0, out, zero_stage=3, tokenizer=AutoTokenizer.from_pretrained(world["opt"]))
    whole = zero.gather_whole_model(engine, 0)
    engine.save_checkpoint(tmp_path / "ckpt", tag="t")
    fp32 = zero.consolidate_zero_checkpoint(tmp_path / "ckpt", tag="t")
    tied = zero.tied_parameter_names(engine)
    assert tied == {"lm_head.weight": "model.decoder.embed_tokens.weight"}

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    saved = {k: v for k, v in reloaded.state_dict().items()}
    assert set(saved) == set(reference)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.decoder.embed_tokens.weight.data_ptr()
    assert zero.compare_state_dicts(reference, saved) == 0.0
    assert zero.compare_state_dicts(whole, reference) == 0.0
    assert zero.compare_state_dicts(fp32, reference, tied) == 0.0
    ids = reloaded.generate(torch.tensor([[2, 10, 11]]), max_new_tokens=4, do_sample=False)
    assert ids.shape == (1, 7)


def test_sigkill_mid_save_leaves_previous_save_or_nothing(world, tmp_path):
    from safetensors.torch import load_file

    prev, fresh = tmp_path / "prev", tmp_path / "fresh"
    zero.resave(world["opt"], prev)
    before = load_file(prev / "model.safetensors")
    savers = [zero.start_paused_save(world["opt"], prev), zero.start_paused_save(world["opt"], fresh)]

    killed = zero.kill_when_paused(savers[0], prev)
    assert killed["returncode"] == -signal.SIGKILL
    assert len(killed["temp"]) == 1 and "model.safetensors" in killed["temp_files"], "killed with weights written"
    after = load_file(prev / "model.safetensors")
    assert zero.compare_state_dicts(before, after) == 0.0, "the previous save is intact"
    assert json.loads((prev / "sftlib_save.json").read_text())["tensors"] == len(before)

    assert zero.kill_when_paused(savers[1], fresh)["returncode"] == -signal.SIGKILL
    assert not fresh.exists(), "no half folder where nothing was saved before"
    stale = os.path.basename(killed["temp"][0])
    assert zero.remove_stale_temporaries(prev) == [stale] and not os.path.exists(killed["temp"][0])


# --------------------------------------------------------------------------------------------
# ZeRO-0 on one rank vs ZeRO-3 on two ranks (one launch)
# --------------------------------------------------------------------------------------------

SEQ = "14"  # <= the shortest toy sample (17 tokens): no padding, so every rank averages the same token count
LR = "1e-4"  # at 1e-3 rounding differences, amplified by ReLU and Adam, reach ~5e-3 in 54 steps


def train_args(world, out, batch, cache):
    return ["--model_name_or_path", str(world["opt"]), "--data_path", str(world["data"]), "--data_split", "10,0,0",
            "--data_output_path", str(cache), "--max_seq_len", SEQ, "--per_device_train_batch_size", str(batch),
            "--num_train_epochs", "1", "--dtype", "fp32", "--seed", "1234", "--learning_rate", LR,
            "--output_dir", str(out)]


@pytest.mark.slow
def test_zero0_one_rank_equals_zero3_two_ranks(world, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from sftlib.train import main

    report = tmp_path / "partitions.json"
    proc = run_cli([DEEPSPEED, "--num_gpus", "2", "--master_port", "29673", "--module", "sftlib.train",
                    *train_args(world, tmp_path / "z3", 4, tmp_path / "cache3"), "--zero_stage", "3"],
                   env_extra={zero.REPORT_ENV: str(report)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    history = main(train_args(world, tmp_path / "z0", 8, tmp_path / "cache0") + ["--zero_stage", "0"])
    assert len(history["step"]) >= 24, "a few dozen optimizer steps"

    z0, z3 = load_file(tmp_path / "z0" / "model.safetensors"), load_file(tmp_path / "z3" / "model.safetensors")
    assert set(z0) == set(z3)
    assert zero.compare_state_dicts(z0, z3) < 1e-4
    base = load_file(world["opt"] / "model.safetensors")
    assert zero.compare_state_dicts(base, z0) > 1e-3, "training moved the weights (10x more than the runs differ)"

    ranks = json.loads(report.read_text())["ranks"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "z3")
    assert len(ranks) == 2 and all(r["params"]["real"] < model.num_parameters() for r in ranks)
    assert sum(r["params"]["real"] for r in ranks) == model.num_parameters()
