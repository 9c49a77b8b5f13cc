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


DIMS = perf.ModelDims(128, 4, 1744, 4, 128, 512, False)


def _packed_run(n):  # one packed sample: its first label is -100, positions restart at 0
    return torch.arange(n) + 5, torch.cat([torch.tensor([-100]), torch.arange(n - 1) + 5]), torch.arange(n)


def test_packed_rows_count_their_samples_and_block_diagonal_attention():
    from sftlib.collate import PackingCollator

    rows = []
    for lengths in ([5, 5], [16]):
        parts = [_packed_run(n) for n in lengths]
        rows.append({key: torch.cat([p[i] for p in parts]) for i, key in enumerate(["input_ids", "labels",
                                                                                    "position_ids"])})
    batch = PackingCollator(pad_token_id=1)(rows)
    batch.pop("num_tokens")
    assert perf.packed_samples(batch) == 3
    assert int(perf.attended_pairs(batch["position_ids"])) == 5**2 + 5**2 + 6**2 + 16**2
    meter = perf.StepMeter(DIMS)
    meter.add(batch)
    # row 1: samples of 5 and 5, then its padding run of 6 (a block of its own); row 2: one sample of 16
    per_sample = sum(perf.train_flops(DIMS, 1, n) for n in (5, 5, 6, 16))
    assert meter.samples == 3 and meter.flops == pytest.approx(per_sample, rel=1e-12)
    assert meter.flops < perf.train_flops(DIMS, 2, 16), "the full 16 x 16 square per row overstates"


@pytest.fixture(scope="module")
def toy_sets(world, tmp_path_factory):
    """The toy OPT's unpadded phase-1 set and its packed rows (bins of sample indices)."""
    from sftlib import collate, data
    from sftlib.model import load_hf_tokenizer

    tok = load_hf_tokenizer(str(world["opt"]))
    dyn, _ = data.create_prompt_dataset(0, [str(world["data"])], "10,0,0", str(tmp_path_factory.mktemp("perf")), 1, 1,
                                        tok, 64, end_of_conversation_token=tok.eos_token, pad_to_max_len=False)
    return tok, dyn, collate.PackedDataset(dyn, 64)


@pytest.mark.parametrize("mode", ["mask", "padding_free", "flatten"])
def test_packed_batch_flops_equal_a_per_sample_count(world, toy_sets, mode):
    """Real packed rows of the toy data, each layout: the meter's FLOPs are the sum over samples (and each
    row's padding run) of one unpacked sample's FLOPs, counted here from the bins and the stored lengths."""
    from transformers import AutoConfig

    from sftlib.collate import PackingCollator

    tok, dyn, packed = toy_sets
    dims = perf.model_dims(AutoConfig.from_pretrained(world["opt"]))
    rows = [packed[i] for i in range(4)]
    batch = PackingCollator(tok.pad_token_id, mode=mode)(rows)
    n_tokens = int(batch.pop("num_tokens"))
    lengths = [[int(dyn[j]["attention_mask"].sum()) for j in packed.bins[i]] for i in range(4)]
    width = batch["input_ids"].shape[1]
    pads = [] if mode == "flatten" else [width - sum(row) for row in lengths if width > sum(row)]
    runs = [n for row in lengths for n in row] + pads
    assert sum(runs) == batch["input_ids"].numel() and sum(map(sum, lengths)) == n_tokens
    meter = perf.StepMeter(dims)
    meter.add(batch, n_tokens)
    assert meter.samples == sum(map(len, lengths)) and meter.real_tokens == n_tokens
    assert meter.flops == pytest.approx(sum(perf.train_flops(dims, 1, n) for n in runs), rel=1e-9)
    square = perf.train_flops(dims, *batch["input_ids"].shape)  # the old count: the whole row's square
    assert square > meter.flops


def test_padded_and_dynamic_batches_count_the_whole_row(world, toy_sets):
    from transformers import AutoConfig

    from sftlib.collate import DynamicPaddingCollator

    tok, dyn, _ = toy_sets
    dims = perf.model_dims(AutoConfig.from_pretrained(world["opt"]))
    batch = DynamicPaddingCollator(tok.pad_token_id)([dyn[i] for i in range(6)])
    meter = perf.StepMeter(dims)
    meter.add(batch)
    assert meter.flops == perf.train_flops(dims, *batch["input_ids"].shape)
    assert meter.samples == 6 and meter.real_tokens == sum(int(dyn[i]["attention_mask"].sum()) for i in range(6))


def _old_counts(batch, real_tokens=None):
    """The meter's counts as add() computed them before it kept them on the device (host syncs and all)."""
    from sftlib.constants import IGNORE_INDEX

    b, s = batch["input_ids"].shape[:2]
    mask = batch.get("attention_mask")
    samples = b
    if "position_ids" in batch and (mask is None or mask.dim() == 4):
        samples = int((batch["position_ids"] == 0).sum())
        for row_pos, row_lab in zip(batch["position_ids"], batch["labels"]):
            last = int((row_pos == 0).nonzero().max())
            samples -= int(last > 0 and bool((row_lab[last:] == IGNORE_INDEX).all()))
    real = real_tokens if real_tokens is not None else int(mask.sum()) if mask is not None and mask.dim() == 2 \
        else b * s
    return samples, b * s, real


HOST_READS = ("item", "tolist", "numpy", "__int__", "__float__", "__bool__", "__index__")


@pytest.fixture()
def host_reads(monkeypatch):
    """Counts every conversion of a tensor's value to a Python number (what syncs a GPU with the host)."""
    seen = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            seen.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return seen


def test_add_reads_no_tensor_on_the_host_and_report_converts_once(world, toy_sets, host_reads, monkeypatch):
    """Several micro batches of real toy rows (dynamic padding, each packing layout, a tensor token count):
    add() converts nothing; report() gives the rates the old per-micro-step counts give."""
    from transformers import AutoConfig

    from sftlib.collate import DynamicPaddingCollator, PackingCollator

    tok, dyn, packed = toy_sets
    clock = [0.0]
    monkeypatch.setattr(perf.time, "time", lambda: clock[0])
    batches = [(DynamicPaddingCollator(tok.pad_token_id)([dyn[i] for i in range(5)]), False)]
    for mode in ("mask", "padding_free", "flatten"):
        batches.append((PackingCollator(tok.pad_token_id, mode=mode)([packed[i] for i in range(3)]), True))
    expected = [0, 0, 0]
    for batch, given in batches:
        n_tokens = batch.pop("num_tokens", None) if given else None
        for i, value in enumerate(_old_counts(batch, None if n_tokens is None else int(n_tokens))):
            expected[i] += value
        batch["n_tokens"] = n_tokens
    host_reads.clear()
    meter = perf.StepMeter(perf.model_dims(AutoConfig.from_pretrained(world["opt"])))
    for batch, _ in batches:
        meter.add(batch, batch.pop("n_tokens"))  # the packing collator's count: a tensor, never converted
    assert host_reads == [], f"add() read tensors on the host: {host_reads}"
    clock[0] = 2.0
    rates = meter.report()
    assert len(host_reads) == 1, f"one conversion per report, not {host_reads}"
    samples, padded, real = expected
    assert rates["samples_per_s"] == samples / 2 and rates["padded_tokens_per_s"] == padded / 2
    assert rates["tokens_per_s"] == real / 2


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
    meter = perf.StepMeter(DIMS)
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
