"""sftlib.zero: the gathered ZeRO-3 save against DeepSpeed's own consolidations, on one and two ranks,
and a save path that reads no environment variable."""

import json
import os
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sftlib import dist, zero
from sftlib.lessons.whole_weights import compare_state_dicts, gather_whole_model
from sftlib.utils import save_hf_format
from tests.helpers import DEEPSPEED, run_cli

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

    dist.init_distributed()
    model = AutoModelForCausalLM.from_pretrained(world["opt"], dtype=torch.float32)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    config = get_train_ds_config(offload=False, dtype="fp32", stage=3)
    config.update(train_batch_size=1, train_micro_batch_size_per_gpu=1)
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()), config=config)
    assert all(hasattr(p, "ds_id") for p in engine.parameters()), "ZeRO-3 took the parameters over"
    assert any(p.numel() == 0 < p.ds_numel for p in engine.parameters()), "big ones released between uses"

    out = tmp_path / "gathered"
    zero.save_zero_three_model(engine, 0, out, zero_stage=3, tokenizer=AutoTokenizer.from_pretrained(world["opt"]))
    whole = gather_whole_model(engine, 0)
    engine.save_checkpoint(tmp_path / "ckpt", tag="t")
    fp32 = zero.consolidate_zero_checkpoint(tmp_path / "ckpt", tag="t")
    tied = zero.tied_parameter_names(engine)
    assert tied == {"lm_head.weight": "model.decoder.embed_tokens.weight"}

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    saved = {k: v for k, v in reloaded.state_dict().items()}
    assert set(saved) == set(reference)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.decoder.embed_tokens.weight.data_ptr()
    assert compare_state_dicts(reference, saved) == 0.0
    assert compare_state_dicts(whole, reference) == 0.0
    assert compare_state_dicts(fp32, reference, tied) == 0.0
    ids = reloaded.generate(torch.tensor([[2, 10, 11]]), max_new_tokens=4, do_sample=False)
    assert ids.shape == (1, 7)


class EnvironSpy(MutableMapping):
    """An ``os.environ`` stand-in that records the file of every reader (``os.getenv`` and
    ``Mapping.get`` are looked through to their caller)."""

    _LOOK_THROUGH = (vars(os), MutableMapping.get.__globals__, globals())  # module namespaces

    def __init__(self, values: dict):
        self.values, self.readers = dict(values), []

    def _read(self):
        frame = sys._getframe(2)
        while frame is not None and any(frame.f_globals is ns for ns in self._LOOK_THROUGH):
            frame = frame.f_back
        self.readers.append(frame.f_code.co_filename if frame is not None else "?")

    def __getitem__(self, key):
        self._read()
        return self.values[key]

    def __contains__(self, key):
        self._read()
        return key in self.values

    def __iter__(self):
        self._read()
        return iter(list(self.values))

    def __len__(self):
        self._read()
        return len(self.values)

    def copy(self):
        self._read()
        return dict(self.values)

    def __setitem__(self, key, value):
        self.values[key] = value

    def __delitem__(self, key):
        del self.values[key]


def test_save_path_reads_no_environment_variable(world, tmp_path, monkeypatch):
    """Both saves run with ``os.environ`` spied on: no read comes from sftlib's code, and the old test
    hooks (``SFTLIB_SAVE_PAUSE_S``, ``SFTLIB_ZERO_REPORT``) set to a 30 s pause and a report path do nothing."""
    import deepspeed  # noqa: F401  (importing it reads settings; that is not the save's doing)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(world["opt"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(world["opt"])
    report = tmp_path / "report.json"
    spy = EnvironSpy(dict(os.environ, SFTLIB_SAVE_PAUSE_S="30", SFTLIB_ZERO_REPORT=str(report)))
    sftlib_dir = str(Path(zero.__file__).parent) + os.sep
    monkeypatch.setattr(os, "environ", spy)

    dist.local_rank()  # a library function that does read one: the spy must see it
    assert {r for r in spy.readers if r.startswith(sftlib_dir)} == {dist.__file__}, spy.readers
    spy.readers.clear()
    t0 = time.time()
    zero.save_zero_three_model(model, 0, tmp_path / "zero3", zero_stage=0, tokenizer=tokenizer)
    save_hf_format(model, tokenizer, SimpleNamespace(output_dir=str(tmp_path / "hf")))
    seconds = time.time() - t0
    monkeypatch.undo()

    assert [r for r in spy.readers if r.startswith(sftlib_dir)] == []
    assert seconds < 30 and not report.exists(), "no pause, no report"
    assert (tmp_path / "zero3" / "model.safetensors").is_file() and (tmp_path / "hf" / "model.safetensors").is_file()


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
    """sftlib.train under ZeRO-3 on two ranks, launched through the lesson that also records what each
    rank held just before the save (``sftlib.lessons.zero_ranks --train-report``)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from sftlib.train import main

    report = tmp_path / "partitions.json"
    proc = run_cli([DEEPSPEED, "--num_gpus", "2", "--master_port", str(dist.free_port()),
                    "--module", "sftlib.lessons.zero_ranks", "--train-report", str(report),
                    *train_args(world, tmp_path / "z3", 4, tmp_path / "cache3"), "--zero_stage", "3"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    history = main(train_args(world, tmp_path / "z0", 8, tmp_path / "cache0") + ["--zero_stage", "0"])
    assert len(history["step"]) >= 24, "a few dozen optimizer steps"

    z0, z3 = load_file(tmp_path / "z0" / "model.safetensors"), load_file(tmp_path / "z3" / "model.safetensors")
    assert set(z0) == set(z3)
    assert compare_state_dicts(z0, z3) < 1e-4
    base = load_file(world["opt"] / "model.safetensors")
    assert compare_state_dicts(base, z0) > 1e-3, "training moved the weights (10x more than the runs differ)"

    ranks = json.loads(report.read_text())["ranks"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "z3")
    assert len(ranks) == 2 and all(r["params"]["real"] < model.num_parameters() for r in ranks)
    assert sum(r["params"]["real"] for r in ranks) == model.num_parameters()
