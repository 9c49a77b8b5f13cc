"""bench/gpu_smoke.sh --dry-run: each command it would run is accepted by the parser it reaches (it cannot rot)."""

import os
import shlex
import subprocess

import pytest

from tests.helpers import ROOT


@pytest.fixture(scope="module")
def commands():
    proc = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_smoke.sh"), "--dry-run"], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]


def _after(cmd, marker):
    return cmd[cmd.index(marker) + 1:]


def test_every_training_command_parses_and_the_rows_cover_the_issue(commands):
    from sftlib.train import parse_args

    trains = [parse_args(_after(c, "sftlib.train")) for c in commands if "sftlib.train" in c]
    assert all(c[:4] == [c[0], "--num_gpus", "1", "--master_port"] for c in commands if "sftlib.train" in c)
    seen = {(a.dtype, a.zero_stage, a.lora_dim > 0 and a.only_optimize_lora and a.gradient_checkpointing,
             a.packing) for a in trains}
    assert {("fp16", 0, False, None), ("bf16", 2, False, None), ("bf16", 3, True, None),
            ("bf16", 0, False, "padding_free"), ("bf16", 0, False, "auto")} <= seen
    resumed = [a for a in trains if a.resume_from_checkpoint]
    killed = [a for a in trains if a.output_dir == resumed[0].output_dir and not a.resume_from_checkpoint]
    assert len(resumed) == 1 and len(killed) == 1 and killed[0].save_steps == 8
    assert resumed[0].resume_from_checkpoint == f"{killed[0].output_dir}_checkpoints"


def test_prompt_eval_hybrid_engine_and_helper_commands_parse(commands):
    from sftlib import prompt_eval
    from sftlib.lessons import hybrid_engine
    from sftlib.utils import SFTError

    evals = [prompt_eval.parse_args(_after(c, "sftlib.prompt_eval")) for c in commands if "sftlib.prompt_eval" in c]
    assert len(evals) == 1 and evals[0].dtype == "bf16"
    hybrid = [c for c in commands if "sftlib.lessons.hybrid_engine" in c]
    assert len(hybrid) == 1
    with pytest.raises(SFTError, match="CUDA"):  # parsed, then refused on a CPU before anything is loaded
        hybrid_engine.main(_after(hybrid[0], "sftlib.lessons.hybrid_engine"))
    helpers = [c for c in commands if any(x.endswith("gpu_smoke_tools.py") for x in c)]
    assert [c[c.index("bench/gpu_smoke_tools.py") + 1] for c in helpers] == ["compare"]
    known = ("sftlib.train", "sftlib.prompt_eval", "sftlib.lessons.hybrid_engine", "bench/gpu_smoke_tools.py")
    assert all(any(k in c for k in known) or c[0] == "test" for c in commands), "a command no test parses"
    checks = [c for c in commands if c[0] == "test"]
    assert len(checks) == 1 and checks[0][1] == "-f" and checks[0][-3:-1] == ["!", "-e"], "kill before the final save"


def test_table_reads_rows_logs_and_memory(tmp_path):
    """The table helper on a fake row: rates from sftlib's own step lines, MFU against the given peak."""
    import sys

    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import gpu_smoke_tools

    step = "step {} | loss 2.5000 | 3.0k tok/s | 100.0 samples/s | 98.9 TFLOPs | lr 1.0e-04"
    (tmp_path / "a.log").write_text("\n".join(step.format(i) for i in range(1, 8)))
    (tmp_path / "a.mem").write_text("1024\n4096\n2048\n")
    (tmp_path / "a.row.json").write_text(f'{{"n": 1, "name": "a", "rc": 0, "log": "{tmp_path / "a.log"}", '
                                         f'"mem": "{tmp_path / "a.mem"}"}}')
    table = gpu_smoke_tools.table(str(tmp_path), 989.0)
    assert table.splitlines()[-1] == "| a | 100.0 | 98.9 | 10.0% | 4.0 | PASS |", table
