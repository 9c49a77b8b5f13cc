"""bench/gpu_smoke.sh and its helpers, on a CPU: the dry run's commands are accepted by the parsers they
reach (they cannot rot), the script's own logic (preflight, rows isolated, bf16 skipped below sm_80, the
time budget, one table) runs against fake GPU tools, and the resume check fails on a resume that
restored nothing."""

import json
import os
import shlex
import stat
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import gpu_smoke_tools  # noqa: E402

SCRIPT = os.path.join(ROOT, "bench", "gpu_smoke.sh")
STEP = "step {} | loss {:.4f} | 3.0k tok/s | 100.0 samples/s | 98.9 TFLOPs | lr 1.0e-04"


@pytest.fixture(scope="module")
def commands():
    proc = subprocess.run(["bash", SCRIPT, "--dry-run"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX")})
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]


def _after(cmd, marker):
    return cmd[cmd.index(marker) + 1:]


def test_the_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", SCRIPT], capture_output=True, text=True).returncode == 0


def test_every_training_command_parses_and_the_rows_cover_the_issue(commands, monkeypatch):
    from sftlib.arguments import check_combinations, check_numbers
    from sftlib.train import parse_args

    trains = [parse_args(_after(c, "sftlib.train")) for c in commands if "sftlib.train" in c]
    assert all(c[:4] == [c[0], "--num_gpus", "1", "--master_port"] for c in commands if "sftlib.train" in c)
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")  # the rows' flags as validate_args checks them on a GPU
    for args in trains:
        check_numbers(args)
        check_combinations(args)
    seen = {(a.dtype, a.zero_stage, a.lora_dim > 0 and a.only_optimize_lora and a.gradient_checkpointing,
             a.packing) for a in trains}
    assert {("fp16", 0, False, None), ("bf16", 2, False, None), ("bf16", 3, True, None),
            ("bf16", 0, False, "padding_free"), ("bf16", 0, False, "auto")} <= seen
    resumed = [a for a in trains if a.resume_from_checkpoint]
    killed = [a for a in trains if a.output_dir == resumed[0].output_dir and not a.resume_from_checkpoint]
    assert len(resumed) == 1 and len(killed) == 1 and killed[0].save_steps == 8
    assert resumed[0].resume_from_checkpoint == f"{killed[0].output_dir}_checkpoints"
    ports = [c[c.index("--master_port") + 1] for c in commands if "sftlib.train" in c]
    assert len(set(ports)) == len(ports), "each row its own port"


def test_helper_commands_parse_and_the_resume_check_compares_the_right_runs(commands):
    from sftlib.train import parse_args

    helpers = [gpu_smoke_tools.parse_args(_after(c, "bench/gpu_smoke_tools.py"))
               for c in commands if "bench/gpu_smoke_tools.py" in c]
    assert [h.command for h in helpers] == ["preflight", "models", "compare", "hybrid", "table"]
    models, compare, hybrid, table = helpers[1], helpers[2], helpers[3], helpers[4]
    trains = [parse_args(_after(c, "sftlib.train")) for c in commands if "sftlib.train" in c]
    uninterrupted = next(a for a in trains if a.output_dir.endswith("fp16_zero0"))
    resumed = next(a for a in trains if a.resume_from_checkpoint)
    assert (compare.ref, compare.got, compare.initial) == (uninterrupted.output_dir, resumed.output_dir,
                                                           uninterrupted.model_name_or_path)
    out = os.path.dirname(models.out)
    assert compare.log == f"{out}/resume.log", "the resume row's log (row NAME writes OUT/NAME.log)"
    assert table.out == out and table.peak_tflops == 989 and uninterrupted.model_name_or_path.startswith(models.out)
    assert hybrid.model == uninterrupted.model_name_or_path, "the hybrid-engine lesson runs the ~125M OPT"
    toys = [c for c in commands if "sftlib.lessons.toy" in c]
    assert len(toys) == 1 and _after(toys[0], "--models") == ["opt", "llama"]


def test_prompt_eval_hybrid_engine_and_every_command_is_known(commands, monkeypatch):
    from sftlib import prompt_eval
    from sftlib.errors import SFTError
    from sftlib.lessons import hybrid_engine

    evals = [prompt_eval.parse_args(_after(c, "sftlib.prompt_eval")) for c in commands if "sftlib.prompt_eval" in c]
    assert len(evals) == 1 and evals[0].dtype == "bf16"
    helpers = [_after(c, "bench/gpu_smoke_tools.py") for c in commands if "bench/gpu_smoke_tools.py" in c]
    hybrid = [gpu_smoke_tools.parse_args(h) for h in helpers if h[0] == "hybrid"]
    assert len(hybrid) == 1
    lesson = gpu_smoke_tools.hybrid_command(hybrid[0].model, hybrid[0].dtype)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")  # a CPU, on a GPU host too
    with pytest.raises(SFTError, match="CUDA"):  # parsed, then refused on a CPU before anything is loaded
        hybrid_engine.main(_after(lesson, "sftlib.lessons.hybrid_engine"))
    known = ("sftlib.train", "sftlib.prompt_eval", "sftlib.lessons.toy", "bench/gpu_smoke_tools.py")
    assert all(any(k in c for k in known) or c[0] == "test" for c in commands), "a command no test parses"
    checks = [c for c in commands if c[0] == "test"]
    assert len(checks) == 1 and checks[0][1] == "-f" and checks[0][-3:-1] == ["!", "-e"], "kill before the final save"


def test_the_hybrid_row_passes_a_one_line_refusal_or_a_generation_and_nothing_else(world):
    """The row's verdict on the lesson's real refusal line (made here from the toy OPT, as the GPU run makes
    it), on a generation, and on what must fail: DeepSpeed's traceback, a refusal among other lines, the CPU's."""
    from transformers import AutoModelForCausalLM

    from sftlib.errors import SFTError
    from sftlib.lessons import hybrid_engine

    with pytest.raises(SFTError) as refused:
        hybrid_engine.check_injection(AutoModelForCausalLM.from_pretrained(world["opt"]))
    line = f"error: {refused.value}\n"
    ok, text = gpu_smoke_tools.hybrid_verdict(2, "", line)
    assert ok and text.startswith("refused in one line before DeepSpeed started: the hybrid engine cannot run"), text
    assert gpu_smoke_tools.hybrid_verdict(0, "DeepSpeedHybridEngine generated: 'hi'\n", "")[0]
    traceback = "Traceback (most recent call last):\n  ...\nAttributeError: 'tuple' object has no attribute 'size'\n"
    assert gpu_smoke_tools.hybrid_verdict(1, "", traceback) == (
        False, "exit status 1, 3 stderr line(s); last: AttributeError: 'tuple' object has no attribute 'size'")
    assert not gpu_smoke_tools.hybrid_verdict(2, "", "[WARNING] something first\n" + line)[0], "one line only"
    assert not gpu_smoke_tools.hybrid_verdict(2, "", "error: the hybrid engine needs a CUDA GPU ...\n")[0]


# ------------------------------------------------------------------------------ preflight

def facts(**change):
    base = {"torch": "2.13.0", "torch_cuda": "13.0", "available": True, "name": "NVIDIA H200", "capability": (9, 0),
            "nvcc": "/usr/local/cuda/bin/nvcc", "nvcc_release": "13.0"}
    return {**base, **change}


def test_preflight_stops_in_one_line_without_a_usable_gpu():
    lines, status = gpu_smoke_tools.preflight_lines(facts(torch="2.13.0+cpu", torch_cuda=None, available=False))
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: torch 2.13.0+cpu is a CPU build")
    assert "pip install --force-reinstall torch==2.13.0 --index-url https://pypi.org/simple" in lines[0]
    lines, status = gpu_smoke_tools.preflight_lines(facts(available=False))
    assert status == 2 and lines == ["error: torch 2.13.0 (CUDA 13.0) sees no GPU (torch.cuda.is_available() is "
                                     "False); check nvidia-smi, the driver and CUDA_VISIBLE_DEVICES"]


def test_preflight_on_this_machine_is_the_real_check():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_smoke_tools.py"), "preflight"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    if torch.cuda.is_available():
        assert proc.returncode == 0 and "bf16: " in proc.stdout, proc.stdout + proc.stderr
    else:
        assert proc.returncode == 2 and len(proc.stdout.splitlines()) == 1, proc.stdout + proc.stderr
        assert proc.stdout.startswith("error: torch "), proc.stdout


def test_preflight_bf16_below_sm80_and_nvcc_present_or_not():
    lines, status = gpu_smoke_tools.preflight_lines(facts(name="Tesla T4", capability=(7, 5), nvcc=None))
    assert status == 0 and lines[0] == "GPU 0: Tesla T4, compute capability 7.5 (sm_75); torch 2.13.0 (CUDA 13.0)"
    assert lines[1].startswith("bf16: no (sm_75 is below sm_80") and lines[3].startswith("nvcc: not found")
    assert lines[2].startswith("dtype: fp16 "), "the rows in the GPU's own precision: the notebooks' choice"
    lines, _ = gpu_smoke_tools.preflight_lines(facts(capability=(8, 0), nvcc_release="12.4"))
    assert lines[1] == "bf16: yes" and lines[2].startswith("dtype: bf16 ")
    assert lines[3].startswith("nvcc: /usr/local/cuda/bin/nvcc, release 12.4 (torch's CUDA is 13.0")
    assert gpu_smoke_tools.preflight_lines(facts())[0][3] == "nvcc: /usr/local/cuda/bin/nvcc, release 13.0"


# ------------------------------------------------------------------------------ the script against fake GPU tools

def _executable(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture()
def fake_gpu(tmp_path):
    """A fake nvidia-smi (memory readings not numeric, as on some GPUs), python (the preflight says what
    FAKE_BF16 says; table and compare are the real ones) and deepspeed launcher (step lines; the row on
    port FAKE_FAIL_PORT fails)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "nvidia-smi", '#!/bin/bash\ncase "$*" in *name*) echo "Tesla T4";; *) echo "[N/A]";; esac\n')
    py = _executable(bin_dir / "python", f"""#!/bin/bash
case "$*" in
  *"gpu_smoke_tools.py preflight"*) echo "GPU 0: fake"; echo "bf16: $FAKE_BF16"; echo "dtype: $FAKE_DTYPE"; exit 0;;
  *"gpu_smoke_tools.py table"*|*"gpu_smoke_tools.py compare"*) exec {sys.executable} "$@";;
  *) echo "fake python: $*"; exit 0;;
esac
""")
    steps = "; ".join(f"echo '{STEP.format(i, 2.0)}'" for i in range(1, 7))
    ds = _executable(bin_dir / "deepspeed", f"""#!/bin/bash
[[ "$*" == *"--master_port $FAKE_FAIL_PORT "* ]] && {{ echo "Traceback: a failing row"; exit 3; }}
{steps}
""")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX")}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", PY=py, DEEPSPEED=ds, SMOKE_OUT=str(tmp_path / "out"),
               STEP_TIMEOUT="30", FAKE_BF16="yes", FAKE_DTYPE="bf16", FAKE_FAIL_PORT="29602")

    def run(**change):
        proc = subprocess.run(["bash", SCRIPT], capture_output=True, text=True, timeout=300, cwd=ROOT,
                              env={**env, **change})
        table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
        return proc, {line.split(" | ")[0][2:]: line for line in table[1:]}, table

    return run


def test_rows_are_isolated_and_one_table_is_printed(fake_gpu):
    proc, rows, table = fake_gpu()
    assert proc.returncode == 1, proc.stdout + proc.stderr  # rows failed, so the script does
    assert table[0].startswith("| row | measured | samples/s") and proc.stdout.count("| row |") == 1
    assert rows["fp16_zero0"] == ("| fp16_zero0 | OPT-125m fp16 ZeRO-0, 16 x up to 512 tokens (dynamic padding); "
                                  "median of steps 3-6 of 6 | 100.0 | 98.9 | 10.0% | - | PASS |"), "[N/A] memory: '-'"
    assert rows["hybrid_engine"].startswith("| hybrid_engine | notebook 06 hybrid-engine lesson, bf16 | - |")
    assert rows["bf16_zero2"].endswith("| FAIL (rc 3) |"), "the failing row"
    after = ["bf16_zero3_lora_gc", "packing_padding_free_sdpa", "resume", "prompt_eval_gpu", "hybrid_engine"]
    assert all(rows[name].endswith("| PASS |") for name in after), "every row after it still ran"
    assert rows["killed_before_final_save"].endswith("FAIL (rc 1) |"), "the fake launcher wrote no checkpoint"
    assert rows["resume_equals_uninterrupted"].endswith("FAIL (rc 1) |")
    assert "packing_flatten_flash_attention" not in rows, "no flash_attn model was built"


def test_below_sm80_the_bf16_rows_are_skipped_with_the_reason(fake_gpu, tmp_path):
    proc, rows, _ = fake_gpu(FAKE_BF16="no (sm_75 is below sm_80)", FAKE_DTYPE="fp16", FAKE_FAIL_PORT="0")
    skipped = ["bf16_zero2", "bf16_zero3_lora_gc", "packing_padding_free_sdpa"]
    assert all(rows[n].endswith("| skipped: bf16 needs compute capability 8.0+ (see the preflight) |")
               for n in skipped), rows
    assert rows["fp16_zero0"].endswith("PASS |") and rows["hybrid_engine"].endswith("PASS |")
    assert rows["prompt_eval_gpu"].endswith("PASS |"), "runs in the GPU's own precision instead"
    for name in ("prompt_eval_gpu", "hybrid_engine"):  # the fake python logs the command it was given
        assert "--dtype fp16" in (tmp_path / "out" / f"{name}.log").read_text()
    assert proc.returncode == 1 and rows["resume_equals_uninterrupted"].endswith("FAIL (rc 1) |")


def test_rows_past_the_time_budget_are_skipped_and_fail_the_run(fake_gpu):
    proc, rows, _ = fake_gpu(SMOKE_BUDGET="10")
    assert proc.returncode == 1 and len(rows) == 9, proc.stdout
    assert all(line.endswith("| SKIPPED (time budget) |") for line in rows.values()), rows


def test_a_fresh_clone_creates_its_environment_or_stops_in_one_line(tmp_path):
    """No .venv, no active environment: the script creates .venv; when that fails, one error line, no .venv."""
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "gpu_smoke.sh").write_text(open(SCRIPT).read())
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "PY")}
    proc = subprocess.run(["bash", str(tmp_path / "bench" / "gpu_smoke.sh")], capture_output=True, text=True,
                          timeout=60, env={**env, "PYTHON": "false"})
    assert proc.returncode == 2
    assert proc.stdout.splitlines()[0].startswith("creating .venv with false")
    assert proc.stdout.splitlines()[1].startswith("error: installing the project failed")
    assert not (tmp_path / ".venv").exists()


# ------------------------------------------------------------------------------ the table

def test_table_reads_rows_logs_and_memory(tmp_path):
    """The table helper on fake rows: rates from sftlib's own step lines, MFU against the given peak, memory
    traces with nvidia-smi's non-numeric lines, an unreadable record and a skipped row."""
    (tmp_path / "a.log").write_text("\n".join(STEP.format(i, 2.5) for i in range(1, 8)))
    (tmp_path / "a.mem").write_text("1024\n[N/A]\n4096\nNo devices were found\n2048, 1\n[Not Supported]\n\n")
    (tmp_path / "a.row.json").write_text(json.dumps({"n": 1, "name": "a", "rc": 0, "log": str(tmp_path / "a.log"),
                                                     "mem": str(tmp_path / "a.mem")}))
    (tmp_path / "b.row.json").write_text('{"n": 2, "name": "b", "rc": 0, "log": ')  # cut off mid-write
    (tmp_path / "c.row.json").write_text(json.dumps({"n": 3, "name": "c", "rc": 0, "log": "", "mem": "",
                                                     "skip": "bf16 needs compute capability 8.0+"}))
    (tmp_path / "d.row.json").write_text(json.dumps({"n": 4, "name": "d", "rc": 124, "log": str(tmp_path / "none"),
                                                     "mem": str(tmp_path / "none")}))
    (tmp_path / "e.log").write_text("PASS weights\nPASS more weights\nFAIL losses: 3 of 8 steps\nPASS resume\n")
    (tmp_path / "f.log").write_text("$ python -m x\nerror: no\nPASS refused in one line before DeepSpeed started: "
                                    + "the hybrid engine cannot run " + "x" * 100 + "\n")
    for n, name in ((5, "e"), (6, "f")):
        (tmp_path / f"{name}.row.json").write_text(json.dumps({"n": n, "name": name, "what": f"check {name}", "rc": 0,
                                                                "log": str(tmp_path / f"{name}.log"), "mem": ""}))
    table = gpu_smoke_tools.table(str(tmp_path), 989.0).splitlines()
    assert table[2] == "| a | a; median of steps 3-7 of 7 | 100.0 | 98.9 | 10.0% | 4.0 | PASS |", table
    assert table[3] == "| c | c | - | - | - | - | skipped: bf16 needs compute capability 8.0+ |"
    assert table[4] == "| d | d | - | - | - | - | FAIL (timed out) |"
    assert table[5] == "| e | check e: 3 of 4 checks passed | - | - | - | - | PASS |"
    assert table[6].startswith("| f | check f: refused in one line before DeepSpeed started: the hybrid engine cannot")
    assert table[6].endswith(" ... | - | - | - | - | PASS |"), "one check's own words, cut short"
    assert table[7].startswith("| b | b | - | - | - | - | FAIL (unreadable row record"), table
    assert gpu_smoke_tools.memory_mib("[N/A]\nnan\n-1\n12.5\n") == [12.5]


# ------------------------------------------------------------------------------ the resume check

def _save(folder, weights, losses, log=None):
    from safetensors.torch import save_file

    folder.mkdir()
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"))
    (folder / "training_history.json").write_text(json.dumps({"step": list(range(1, len(losses) + 1)),
                                                              "loss": losses}))
    return str(folder)


@pytest.fixture()
def runs(tmp_path):
    """A 16-step run (ref) from an initial model, and the resumes to check against it: true ones, and
    resumes that restored nothing. Each step moves each weight by ~1e-4 (Adam at lr 1e-4), 16 steps by ~4e-4."""
    g = torch.Generator().manual_seed(0)
    init = {"w": torch.randn(64, 64, generator=g) * 0.02, "ln": torch.ones(8)}
    steps = [{k: torch.randn(v.shape, generator=g) * 1e-4 for k, v in init.items()} for _ in range(16)]

    def trained(first, last, start):
        return {k: start[k] + sum(s[k] for s in steps[first - 1:last]) for k in init}

    ref = trained(1, 16, init)
    losses = [10.0 - 0.25 * i for i in range(16)]
    resumed_log = "resumed from ckpt/global_step8: epoch 1, micro batch 8, global step 8\n" + "\n".join(
        STEP.format(i, losses[i - 1]) for i in range(9, 17))

    def make(name, weights, hist, log):
        folder = _save(tmp_path / name, weights, hist)
        (tmp_path / f"{name}.log").write_text(log)
        return folder, str(tmp_path / f"{name}.log")

    noisy = {k: v + 1e-6 * torch.randn(v.shape, generator=g) for k, v in ref.items()}  # GPU-kernel noise
    out = {"init": _save(tmp_path / "init", init, []), "ref": _save(tmp_path / "ref", ref, losses),
           "true": make("true", noisy, [x * (1 + 1e-4) for x in losses], resumed_log),
           # the checkpoint's weights were not loaded: steps 9-16 trained the initial model
           "from_start": make("from_start", trained(9, 16, init), losses[:8] + losses[:8], resumed_log),
           # nothing trained after the resume: the initial model saved
           "initial": make("initial", init, losses, resumed_log),
           # one small tensor left at its initial value (the rest restored)
           "one_tensor": make("one_tensor", {**ref, "ln": trained(9, 16, init)["ln"]}, losses, resumed_log),
           # no resume at all, the run started afresh: same weights and losses, but the log tells
           "afresh": make("afresh", ref, losses, "\n".join(STEP.format(i, losses[i - 1]) for i in range(1, 17)))}
    return out


def _compare(runs, name):
    got, log = runs[name]
    checks = gpu_smoke_tools.compare_checks(runs["ref"], got, runs["init"], log)
    return [ok for ok, _ in checks], [line for _, line in checks]


def test_a_true_resume_passes(runs, capsys):
    oks, lines = _compare(runs, "true")
    assert all(oks), lines
    got, log = runs["true"]
    assert gpu_smoke_tools.main(["compare", runs["ref"], got, "--initial", runs["init"], "--log", log]) == 0
    assert capsys.readouterr().out.count("PASS ") == 4


@pytest.mark.parametrize("name, failing", [
    ("from_start", {"weights: |resumed", "weights: the furthest", "losses"}),
    ("initial", {"weights: |resumed", "weights: the furthest"}),
    ("one_tensor", {"weights: the furthest"}),
    ("afresh", {"resume"}),
])
def test_a_resume_that_restored_nothing_fails(runs, name, failing, capsys):
    oks, lines = _compare(runs, name)
    failed = {next(p for p in ("weights: |resumed", "weights: the furthest", "losses", "resume") if line.startswith(p))
              for ok, line in zip(oks, lines) if not ok}
    assert failed == failing, lines
    got, log = runs[name]
    assert gpu_smoke_tools.main(["compare", runs["ref"], got, "--initial", runs["init"], "--log", log]) == 1
    assert "FAIL " in capsys.readouterr().out


def test_the_old_absolute_tolerance_could_not_tell(runs):
    """What the check replaced: the largest weight difference within 1e-2 passes every resume above."""
    ref = gpu_smoke_tools._weights(runs["ref"])
    for name in ("from_start", "initial", "one_tensor"):
        got = gpu_smoke_tools._weights(runs[name][0])
        assert max((ref[k] - got[k]).abs().max().item() for k in ref) <= 1e-2


def test_a_missing_resumed_run_fails_in_one_line(runs, tmp_path, capsys):
    assert gpu_smoke_tools.compare(runs["ref"], str(tmp_path / "nothing"), runs["init"], None) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("FAIL cannot compare:")


@pytest.mark.slow
def test_compare_reads_what_sftlib_writes(world, tmp_path, capsys):
    """On real (CPU) runs: a run, and a resume from its step-4 checkpoint into another folder, pass; the
    initial model standing in for the resumed result fails. (The format of folders, histories and logs.)"""
    import shutil

    from tests.helpers import run_cli

    base = [sys.executable, "-m", "sftlib.train", "--model_name_or_path", str(world["opt"]), "--data_path",
            str(world["data"]), "--data_split", "10,0,0", "--max_seq_len", "48", "--per_device_train_batch_size", "48",
            "--num_train_epochs", "1", "--dtype", "fp32", "--learning_rate", "1e-4",
            "--data_output_path", str(tmp_path / "cache")]
    ref = run_cli(base + ["--save_steps", "4", "--output_dir", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr[-3000:]
    resumed = run_cli(base + ["--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint",
                              str(tmp_path / "ref_checkpoints" / "global_step4")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (tmp_path / "resume.log").write_text(resumed.stdout + resumed.stderr)
    args = [str(tmp_path / "ref"), "--initial", str(world["opt"]), "--log", str(tmp_path / "resume.log")]
    assert gpu_smoke_tools.main(["compare", args[0], str(tmp_path / "resumed"), *args[1:]]) == 0, capsys.readouterr()
    assert "ran steps 5-8 of 8" in capsys.readouterr().out
    shutil.copytree(world["opt"], tmp_path / "initial")
    shutil.copy(tmp_path / "resumed" / "training_history.json", tmp_path / "initial")
    assert gpu_smoke_tools.main(["compare", args[0], str(tmp_path / "initial"), *args[1:]]) == 1
    assert "FAIL weights: |resumed - uninterrupted| = 100.00%" in capsys.readouterr().out
