"""sftlib.perf: FLOPs per device from model.config, checked against DeepSpeed's flops profiler."""

import types

import pytest
import torch

from sftlib import perf


def _profiler_ratio(model, batch, seq):
    ids = torch.randint(4, 1000, (batch, seq))
    measured = perf.profile_forward_flops(model, ids)
    return perf.train_flops(model, batch, seq) / 3 / measured


@pytest.mark.parametrize("seq", [64, 512])
def test_agrees_with_deepspeed_flops_profiler_on_the_tiny_model(world, seq):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(world["opt"])
    assert abs(_profiler_ratio(model, 2, seq) - 1) < 0.10


@pytest.mark.parametrize("kind", ["llama_gqa", "gpt2"])
def test_any_architecture_reads_its_own_config_names(kind):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    if kind == "llama_gqa":  # gated MLP, grouped KV heads, intermediate_size
        config = LlamaConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=344)
    else:  # n_embd / n_layer / n_head and Conv1D layers
        config = GPT2Config(vocab_size=1000, n_embd=128, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    model = AutoModelForCausalLM.from_config(config)
    dims = perf.model_dims(model)
    assert (dims.hidden, dims.layers, dims.vocab) == (128, 2, 1000)
    assert dims.gated == (kind == "llama_gqa") and dims.kv_dim == (64 if kind == "llama_gqa" else 128)
    assert abs(_profiler_ratio(model, 2, 128) - 1) < 0.10


def test_reduces_to_megatron_formula_for_gpt_blocks_with_recompute():
    dims = perf.ModelDims(hidden=2048, layers=24, vocab=50272, heads=32, kv_dim=2048, ffn=8192, gated=False)
    ours = perf.train_flops(dims, 8, 512, gradient_checkpointing=True)
    assert ours == pytest.approx(perf.megatron_flops(8, 512, 24, 2048, 50272, checkpoint_factor=4), rel=1e-12)
    without = perf.train_flops(dims, 8, 512, gradient_checkpointing=False)
    assert 0.75 < without / ours < 0.8  # 3 passes instead of 4 for the layers, 3 for the LM head either way


def test_reads_sizes_through_an_engine_without_model_model(world):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(world["opt"])
    engine_like = types.SimpleNamespace(module=types.SimpleNamespace(config=config))  # no `.model`
    assert perf.model_dims(engine_like) == perf.model_dims(config)
    with pytest.raises(ValueError, match="pass the sizes by hand"):
        perf.model_dims(types.SimpleNamespace(vocab_size=10))


def test_tflops_are_per_device_and_samples_are_for_all_ranks(world, monkeypatch):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(world["opt"])
    clock = [0.0]
    monkeypatch.setattr(perf.time, "time", lambda: clock[0])
    batch = {"input_ids": torch.ones(4, 64, dtype=torch.long), "attention_mask": torch.ones(4, 64)}
    reports = []
    for world_size in (1, 2):
        clock[0] = 100.0
        meter = perf.StepMeter(config, world_size=world_size)
        meter.add(batch)
        clock[0] = 102.0  # two seconds for one micro batch
        reports.append(meter.report())
    one, two = reports
    assert one["tflops"] == pytest.approx(perf.train_flops(config, 4, 64) / 2.0 / 1e12)
    assert two["tflops"] == pytest.approx(one["tflops"]), "never divided by the world size"
    assert two["samples_per_s"] == pytest.approx(2 * one["samples_per_s"]) and one["samples_per_s"] == 2.0


def test_packed_rows_count_their_samples_not_their_rows():
    from sftlib.collate import PackingCollator

    def sample_run(n):  # one packed sample: its first label is -100, positions restart at 0
        return torch.arange(n) + 5, torch.cat([torch.tensor([-100]), torch.arange(n - 1) + 5]), torch.arange(n)

    rows = []
    for lengths in ([5, 5], [16]):
        parts = [sample_run(n) for n in lengths]
        rows.append({key: torch.cat([p[i] for p in parts]) for i, key in enumerate(["input_ids", "labels",
                                                                                    "position_ids"])})
    batch = PackingCollator(pad_token_id=1)(rows)
    batch.pop("num_tokens")
    assert perf.packed_samples(batch) == 3
    meter = perf.StepMeter(perf.ModelDims(128, 4, 1744, 4, 128, 512, False))
    meter.add(batch)
    assert meter.samples == 3 and meter.flops == perf.train_flops(meter.dims, 2, 16)


def _autograd_flops(model, ids) -> float:
    """What torch's own FlopCounterMode sees autograd run: forward plus backward matmuls."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    return float(counter.get_total_flops())


@pytest.mark.parametrize("only_lora", [False, True])
def test_lora_frozen_weights_skip_their_weight_gradients(world, only_lora):
    """LoRA on the decoder layers: torch's FLOP counter (forward + backward as autograd runs them) and
    DeepSpeed's profiler (forward) agree with train_flops given the model's trainable_flops."""
    from transformers import AutoModelForCausalLM

    from sftlib import lora

    model = AutoModelForCausalLM.from_pretrained(world["opt"], attn_implementation="eager")
    model = lora.convert_linear_layer_to_lora(model, "decoder.layers.", 8)
    if only_lora:
        model = lora.only_optimize_lora_parameters(model)
    trainable = perf.trainable_flops(model)
    assert trainable.lora > 0 and trainable.frozen > 0  # a LoRA layer's own weight is always frozen
    ids = torch.randint(4, 1000, (2, 64))
    ours = perf.train_flops(model, 2, 64, trainable=trainable)
    assert ours == pytest.approx(_autograd_flops(model, ids), rel=0.05)
    dense = perf.train_flops(model, 2, 64)
    forward = (dense / 3 + 2 * 64 * trainable.lora)
    assert forward == pytest.approx(perf.profile_forward_flops(model, ids), rel=0.10)
    if only_lora:  # frozen matrices: backward 1x instead of 2x, so the dense count overstates
        assert 1.3 < dense / ours < 1.5
    meter = perf.StepMeter(model)
    meter.add({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert meter.flops == pytest.approx(ours)


def test_one_clock_for_every_rate_and_paused_time_is_in_no_span(monkeypatch):
    clock = [10.0]
    monkeypatch.setattr(perf.time, "time", lambda: clock[0])
    meter = perf.StepMeter(perf.ModelDims(128, 4, 1744, 4, 128, 512, False))
    batch = {"input_ids": torch.ones(4, 8, dtype=torch.long),
             "attention_mask": torch.tensor([[1] * 5 + [0] * 3] * 4)}
    meter.add(batch)
    clock[0] = 11.0  # one second of training, then an evaluation of 30 s that must not count
    meter.pause()
    clock[0] = 41.0
    meter.resume()
    meter.add(batch, real_tokens=20)
    clock[0] = 42.0
    r = meter.report()
    assert r["seconds"] == 2.0 and r["samples_per_s"] == 4.0 and r["tokens_per_s"] == 20.0
    assert r["tokens_per_s"] / r["samples_per_s"] == 5, "real tokens per sample, whatever the clock"
    assert r["tflops"] == pytest.approx(2 * perf.train_flops(meter.dims, 4, 8) / 2.0 / 1e12)
    clock[0] = 50.0
    meter.reset()  # a new span starts at the reset, not at the report (a checkpoint in between)
    clock[0] = 51.0
    meter.add(batch)
    assert meter.report()["seconds"] == 1.0
