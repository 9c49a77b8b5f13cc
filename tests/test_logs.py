"""sftlib.logs: every perplexity, step and overflow line of a log is recovered, whatever its vintage."""

import math
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from deepspeed.runtime.config import DeepSpeedConfig
from deepspeed.runtime.fp16 import loss_scaler

from sftlib.cli import run
from sftlib.ds_config import get_train_ds_config
from sftlib.logs import main as logs_cli
from sftlib.logs import parse_log, parse_segment
from tests.helpers import run_cli

FIXTURE = Path(__file__).parent / "fixtures" / "ds_chat_2023.log"
# The fixture is a shortened run shaped like DeepSpeed-Chat's published OPT-1.3B step-1 log
# (training_log_output/opt-1.3b-globalBatchSize128.log: 16 V100s x 8 per GPU, no accumulation, fp16,
# ZeRO-2), 2 epochs of 60 steps; these optimizer steps (1-based) overflowed:
OVERFLOW_STEPS = [1, 2, 3, 4, 5, 6, 111, 112]
FIXTURE_STEPS, FIXTURE_LR = 120, 9.65e-6  # epochs x steps per epoch; --learning_rate, cosine, no warmup


def count_lines(text, needle):
    """An independent count: the file's lines (and tqdm's carriage-return segments) holding ``needle``."""
    return sum(needle in seg for line in text.split("\n") for seg in line.split("\r"))


def test_deepspeed_chat_2023_log_every_line_recovered():
    text = FIXTURE.read_text()
    df = parse_log(FIXTURE)
    kinds = df["kind"].value_counts()
    assert kinds["ppl"] == count_lines(text, "ppl: ") == 3
    assert kinds["ds_step"] == count_lines(text, "] step=") == 12
    assert kinds["overflow"] == count_lines(text, "OVERFLOW!") == 8
    assert kinds["throughput"] == count_lines(text, "RunningAvgSamplesPerSec=")
    assert kinds["epoch"] == count_lines(text, "Beginning of Epoch") == 2
    assert kinds["launcher"] == count_lines(text, "[launch.py:") + count_lines(text, "[runner.py:")
    assert df.attrs["world_size"] == 16 == count_lines(text, "exits successfully")
    ppl = df[df.kind == "ppl"]
    expected = [float(x) for x in re.findall(r"^ppl: (\S+)$", text, re.M)]
    assert ppl["ppl"].tolist() == expected and ppl["epoch"].tolist() == [0, 1, 2]
    steps = df[df.kind == "ds_step"]
    assert steps["step"].tolist() == list(range(10, 130, 10))
    assert steps["skipped"].iloc[-1] == kinds["overflow"], "every skipped step has its OVERFLOW line"
    assert steps["lr"].is_monotonic_decreasing and (steps["mom"] == 0.9).all()
    halving = df[(df.kind == "overflow") & df.new_loss_scale.notna()]
    assert (halving["new_loss_scale"] * 2 == halving["loss_scale"]).all()
    spent = df[(df.kind == "overflow") & df.hysteresis.notna()]
    assert len(spent) + len(halving) == kinds["overflow"] and spent["hysteresis"].tolist() == [2, 2]


def test_fixture_overflows_are_what_deepspeeds_loss_scaler_prints(monkeypatch):
    """Drive DeepSpeed's own DynamicLossScaler, configured from DeepSpeed-Chat's fp16 block, through the
    fixture's steps: it prints the fixture's OVERFLOW lines, in order, between the right step= lines."""
    config = {**get_train_ds_config(offload=False, dtype="fp16"), "train_batch_size": 8,
              "train_micro_batch_size_per_gpu": 8}
    scaler_args = DeepSpeedConfig(config).float16_config.dynamic_loss_scale_args()
    assert scaler_args == {"init_scale": 2 ** 16, "scale_window": 100, "delayed_shift": 2,
                           "consecutive_hysteresis": False, "min_scale": 1}  # DeepSpeed's defaults + window 100
    printed = []
    monkeypatch.setattr(loss_scaler.dist, "get_rank", lambda *args, **kwargs: 0)  # no process group here
    monkeypatch.setattr(loss_scaler, "logger", SimpleNamespace(info=printed.append))
    scaler = loss_scaler.CreateLossScaler(torch.half, 0, True, scaler_args)
    for step in range(1, FIXTURE_STEPS + 1):
        scaler.update_scale(step in OVERFLOW_STEPS)
    df = parse_log(FIXTURE)
    over = df[df.kind == "overflow"]
    assert [t.split("] ", 3)[-1] for t in over["text"]] == printed and len(printed) == len(OVERFLOW_STEPS)
    # each OVERFLOW line sits between the step= lines around its step, and skipped= counts them
    last_step = df["step"].where(df.kind == "ds_step").ffill().fillna(0)
    next_step = df["step"].where(df.kind == "ds_step").bfill()
    assert (last_step[over.index].tolist() == [10 * ((s - 1) // 10) for s in OVERFLOW_STEPS])
    assert (next_step[over.index].tolist() == [10 * -(-s // 10) for s in OVERFLOW_STEPS])
    steps = df[df.kind == "ds_step"]
    assert steps["skipped"].tolist() == [sum(o <= s for o in OVERFLOW_STEPS) for s in steps["step"]]
    # the scheduler does not advance on a skipped step: lr = cosine(step - skipped)
    lr = [FIXTURE_LR * 0.5 * (1 + math.cos(math.pi * (s - k) / FIXTURE_STEPS))
          for s, k in zip(steps["step"], steps["skipped"])]
    assert steps["lr"].tolist() == pytest.approx(lr, rel=1e-12)


@pytest.mark.parametrize("line, expected", [
    # current DeepSpeed: numpy scalars in the lr list, a torchrun-style rank prefix
    ("[rank0]:[2026-11-28 14:18:41,408] [INFO] [logging.py:123:log_dist] [Rank 0] step=20, skipped=1, "
     "lr=[np.float64(0.000698), np.float64(0.000698)], mom=[(0.9, 0.95), (0.9, 0.95)]",
     {"kind": "ds_step", "step": 20, "skipped": 1, "lr": 0.000698, "mom": 0.9}),
    ("[2026-11-28 14:18:41,408] [INFO] [timer.py:264:stop] epoch=1/micro_step=10/global_step=30, "
     "RunningAvgSamplesPerSec=57.28, CurrSamplesPerSec=49.5, MemAllocated=0.64GB, MaxMemAllocated=0.7GB",
     {"kind": "throughput", "epoch": 1, "micro_step": 10, "step": 30, "samples_per_s": 49.5, "max_mem_gb": 0.7}),
    # older timer line without key names
    ("[2022-06-01 10:00:00,000] [INFO] [timer.py:181:stop] 0/40, RunningAvgSamplesPerSec=12.5, "
     "CurrSamplesPerSec=13.0, MemAllocated=2.1GB, MaxMemAllocated=3.3GB",
     {"kind": "throughput", "epoch": 0, "micro_step": 40, "samples_per_s": 13.0, "mem_gb": 2.1}),
    # fp16 without ZeRO (2023) and the bare form of today's loss scaler
    ("[2023-04-14 07:20:47,081] [INFO] [logging.py:96:log_dist] [Rank 0] Overflow detected. Skipping step. "
     "Attempted loss scale: 65536, reducing to 32768.0",
     {"kind": "overflow", "loss_scale": 65536.0, "new_loss_scale": 32768.0, "rank": 0}),
    ("[2023-04-18 01:46:52,554] [INFO] [loss_scaler.py:188:update_scale] [deepspeed] OVERFLOW! Rank 0 Skipping "
     "step. Attempted loss scale: 65536, but hysteresis is 2. Reducing hysteresis to 1",
     {"kind": "overflow", "loss_scale": 65536.0, "new_loss_scale": None, "hysteresis": 2, "rank": 0}),
    ("[deepspeed] OVERFLOW! Skipping step. Gradients are non-finite, weights were not updated.", {"kind": "overflow"}),
    ("[2023-04-14 07:20:47,080] [INFO] [fused_optimizer.py:363:_update_scale] Reducing dynamic loss scale "
     "from 65536 to 32768.0", {"kind": "loss_scale", "loss_scale": 65536.0, "new_loss_scale": 32768.0}),
    ("ppl: 2.2815558910369873, loss: 0.8248", {"kind": "ppl", "ppl": 2.2815558910369873, "loss": 0.8248}),
    ("Model Parameters: 0.331 B, Latency: 1.23s, TFLOPs: 10.07, Samples/sec: 6.49, Time/seq 0.15s, "
     "Batch Size: 8, Sequence Length: 512", {"kind": "dschat_tput", "tflops": 10.07, "samples_per_s": 6.49}),
    ("Epoch: 0, Step: 3, Rank: 1, loss = 2.3125", {"kind": "micro_loss", "rank": 1, "micro_step": 3, "loss": 2.3125}),
    ("step 12 | loss 3.4906 | 1.1k tok/s | 57.1 samples/s | 0.0174 TFLOPs | lr 9.3e-04",
     {"kind": "sft_step", "step": 12, "loss": 3.4906, "tokens_per_s": 1100.0, "samples_per_s": 57.1,
      "tflops": 0.0174, "lr": 9.3e-4}),
    ("step 3 | loss 1.5 | 900 tok/s | lr 1.0e-04", {"kind": "sft_step", "tokens_per_s": 900.0, "lr": 1e-4}),
])
def test_format_drift_is_tolerated(line, expected):
    row = parse_segment(line)
    assert row is not None
    assert row["kind"] == expected["kind"]
    for key, value in expected.items():
        assert row.get(key) == (pytest.approx(value) if isinstance(value, float) else value), key


def test_unrelated_lines_are_ignored():
    for line in ["Loading weights: 100%", "[INFO] [config.py:961:print]   steps_per_print 10",
                 "stepping stones | loss of signal", ""]:
        assert parse_segment(line) is None, line


def train_args(world, *extra):
    return ["--model_name_or_path", str(world["opt"]), "--data_path", str(world["data"]), "--data_split", "10,0,0",
            "--max_seq_len", "48", "--per_device_train_batch_size", "16", "--dtype", "fp32",
            "--deepspeed_log_level", "info", *extra]


def check_sftlib_log(text, train_rows, world_size):
    df = parse_log(text)
    kinds = df["kind"].value_counts()
    steps = -(-train_rows // (16 * world_size))  # ceil: the sampler pads the last batch of each rank
    assert kinds["sft_step"] == count_lines(text, " | loss ") == steps
    assert df[df.kind == "sft_step"]["step"].tolist() == list(range(1, steps + 1))
    assert (df[df.kind == "sft_step"][["samples_per_s", "tflops", "tokens_per_s"]] > 0).all().all()
    assert kinds["ppl"] == count_lines(text, "ppl: ") - count_lines(text, "token-weighted ppl: ") == 2
    assert df[df.kind == "ppl"]["epoch"].tolist() == [0, 1]
    assert kinds["ds_step"] == count_lines(text, "] step=") == 1 + steps // 10  # step=0 at start, then every 10
    assert kinds["throughput"] == count_lines(text, "RunningAvgSamplesPerSec=") == steps // 10
    assert kinds.get("overflow", 0) == count_lines(text, "OVERFLOW") == 0  # fp32: no loss scaling
    return df


def test_one_rank_zero0_sftlib_log(world, tmp_path):
    proc = run_cli([sys.executable, "-m", "sftlib.train", *train_args(world, "--data_output_path", str(tmp_path))])
    assert proc.returncode == 0, proc.stderr[-3000:]
    train_rows = sum(1 for _ in open(world["train"]))
    check_sftlib_log(proc.stdout, train_rows, 1)


@pytest.mark.slow
def test_two_ranks_zero3_sftlib_log(world, tmp_path):
    launcher = str(Path(sys.executable).parent / "deepspeed")
    proc = run_cli([launcher, "--num_gpus", "2", "--master_port", "29583", "--module", "sftlib.train",
                    *train_args(world, "--zero_stage", "3", "--data_output_path", str(tmp_path))])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    train_rows = sum(1 for _ in open(world["train"]))
    df = check_sftlib_log(text, train_rows, 2)
    assert df.attrs["world_size"] == 2 and (df.kind == "launcher").sum() >= 2


def test_cli_prints_counts_and_writes_a_figure(tmp_path, capsys, monkeypatch):
    out = tmp_path / "log.png"
    logs_cli([str(FIXTURE), "--plot", str(out), "--csv", str(tmp_path / "log.csv")])
    printed = capsys.readouterr().out
    assert re.search(r"overflow\s+8", printed) and "perplexity by epoch" in printed
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    missing = tmp_path / "missing.log"
    monkeypatch.delenv("RANK", raising=False)  # cli.run prints on rank 0 only
    with pytest.raises(SystemExit) as exited:
        run(logs_cli, [str(missing)])
    assert exited.value.code == 2 and capsys.readouterr().err == f"error: {missing}: no such log file\n"
