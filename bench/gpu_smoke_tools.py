"""Helpers of ``bench/gpu_smoke.sh``: check the GPU, build the ~125M models offline, compare a resumed
run, print the table.

    python bench/gpu_smoke_tools.py preflight           # torch's CUDA, the GPU, bf16 or not, nvcc or not
    python bench/gpu_smoke_tools.py models OUT          # OUT/opt-125m, OUT/llama-125m (+ OUT/llama-125m-fa)
    python bench/gpu_smoke_tools.py compare REF GOT --initial INIT --log RESUME_LOG
                                                        # a killed-and-resumed run against the uninterrupted one
    python bench/gpu_smoke_tools.py hybrid MODEL --dtype D
                                                        # the hybrid-engine lesson: generates, or refuses in one line
    python bench/gpu_smoke_tools.py table OUT [PEAK]    # one row per OUT/*.row.json (+ its log and memory trace)

The models are OPT-125m's and a Llama of the same size's configurations with fresh weights and the
toy tokenizer (no hub access); what a smoke test needs is the shapes and the code paths, not the
pretrained weights.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OPT_125M = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "ffn_dim": 3072,
            "word_embed_proj_dim": 768, "max_position_embeddings": 2048, "do_layer_norm_before": True,
            "dropout": 0.1, "attention_dropout": 0.0, "activation_function": "relu"}
LLAMA_125M = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 12,
              "intermediate_size": 2048, "max_position_embeddings": 4096, "tie_word_embeddings": True}
WEIGHT_RTOL = 0.05  # |resumed - uninterrupted| at most 5% of |uninterrupted - initial| (L2, all weights)
TENSOR_RTOL = 0.3  # and at most 30% for any one tensor (one tensor left unrestored is ~50%)
LOSS_RTOL = 0.01  # each step's loss within 1% of the uninterrupted run's


# ---------------------------------------------------------------------------------------------- preflight

def gpu_facts() -> dict:
    """What this machine offers a GPU run: torch's build, the first GPU, nvcc."""
    import torch

    facts = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "available": torch.cuda.is_available(),
             "name": None, "capability": None, "nvcc": None, "nvcc_release": None}
    if facts["available"]:
        facts["name"] = torch.cuda.get_device_name(0)
        facts["capability"] = tuple(torch.cuda.get_device_capability(0))
    try:
        from torch.utils.cpp_extension import CUDA_HOME
    except Exception:  # a CPU build may not find one; nvcc on PATH is enough
        CUDA_HOME = None
    nvcc = shutil.which("nvcc") or (CUDA_HOME and shutil.which(str(Path(CUDA_HOME) / "bin" / "nvcc")))
    if nvcc:
        facts["nvcc"] = nvcc
        try:
            text = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
            found = re.search(r"release (\d+\.\d+)", text)
            facts["nvcc_release"] = found.group(1) if found else None
        except (OSError, subprocess.SubprocessError):
            pass
    return facts


def preflight_lines(facts: dict, python: str = ".venv/bin/python") -> tuple[list[str], int]:
    """The lines preflight prints and its exit status: 2 (one ``error:`` line) without a usable GPU.

    ``bf16: yes`` / ``bf16: no (...)`` is the line gpu_smoke.sh reads to run or skip the bf16 rows, and
    ``dtype: X`` the one it reads for the rows that run in the GPU's own precision (``half_dtype``)."""
    torch_text = f"torch {facts['torch']}" + (f" (CUDA {facts['torch_cuda']})" if facts["torch_cuda"] else "")
    if not facts["torch_cuda"]:
        base = facts["torch"].split("+")[0]
        return [f"error: {torch_text} is a CPU build; install PyPI's CUDA build (Linux x86_64 wheels are CUDA "
                f"builds): {python} -m pip install --force-reinstall torch=={base} "
                f"--index-url https://pypi.org/simple"], 2
    if not facts["available"]:
        return [f"error: {torch_text} sees no GPU (torch.cuda.is_available() is False); check nvidia-smi, the driver "
                "and CUDA_VISIBLE_DEVICES"], 2
    major, minor = facts["capability"]
    lines = [f"GPU 0: {facts['name']}, compute capability {major}.{minor} (sm_{major}{minor}); {torch_text}"]
    from sftlib.ds_config import half_dtype  # bf16 from compute capability 8.0: the notebooks' rule too

    dtype = half_dtype((major, minor))
    if dtype == "bf16":
        lines.append("bf16: yes")
    else:
        lines.append(f"bf16: no (sm_{major}{minor} is below sm_80, no bf16 tensor cores: the bf16 rows are skipped)")
    lines.append(f"dtype: {dtype} (prompt_eval and the hybrid-engine lesson run in it)")
    if facts["nvcc"]:
        release = facts["nvcc_release"] or "unknown release"
        note = ""
        if facts["nvcc_release"] and facts["nvcc_release"].split(".")[0] != str(facts["torch_cuda"]).split(".")[0]:
            note = (f" (torch's CUDA is {facts['torch_cuda']}: DeepSpeed refuses to JIT-build its ops with another "
                    "major version)")
        lines.append(f"nvcc: {facts['nvcc']}, release {release}{note}")
    else:
        lines.append("nvcc: not found (DeepSpeed JIT-builds FusedAdam and the hybrid engine's kernels with it; "
                     "rows that need them fail or fall back)")
    return lines, 0


def preflight() -> int:
    try:
        facts = gpu_facts()
    except ImportError as err:
        print(f"error: {sys.executable} cannot import torch ({err}); install the project: pip install -e .")
        return 2
    lines, status = preflight_lines(facts, python=sys.executable or "python")
    print("\n".join(lines))
    return status


# ---------------------------------------------------------------------------------------------- models

def make_models(out: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, OPTConfig

    from sftlib.lessons.toy import ensure_toy_world
    from sftlib.model import load_hf_tokenizer

    world = ensure_toy_world(("opt", "llama"))
    tok = load_hf_tokenizer(str(world["opt"]))
    # OPT-125m's vocabulary size (the toy tokenizer uses the first ids): 125M parameters, as the hub model has
    ids = dict(vocab_size=max(len(tok), 50272), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    configs = {"opt-125m": OPTConfig(**OPT_125M, **ids), "llama-125m": LlamaConfig(**LLAMA_125M, **ids)}
    try:
        import flash_attn  # noqa: F401

        configs["llama-125m-fa"] = LlamaConfig(**LLAMA_125M, **ids, attn_implementation="flash_attention_2")
    except ImportError:
        pass
    for name, config in configs.items():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
        model.save_pretrained(Path(out) / name)
        if name.endswith("-fa"):  # the folder's config.json asks for FlashAttention when loaded
            path = Path(out) / name / "config.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), "attn_implementation": "flash_attention_2"}))
        tok.save_pretrained(Path(out) / name)
        print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters -> {Path(out) / name}")


# ---------------------------------------------------------------------------------------------- compare

def _weights(folder) -> dict:
    from safetensors.torch import load_file

    out = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(path)))
    if not out:
        raise FileNotFoundError(f"{folder}: no *.safetensors")
    return out


def _history(folder) -> dict:
    return json.loads((Path(folder) / "training_history.json").read_text())


def _weight_checks(a: dict, b: dict, init: dict, weight_rtol: float, tensor_rtol: float) -> list[tuple[bool, str]]:
    """Resumed (``b``) against uninterrupted (``a``) weights, relative to how far training moved ``a`` from ``init``."""
    if a.keys() != b.keys():
        return [(False, f"weights: the tensor names differ ({sorted(a.keys() ^ b.keys())[:3]} ...)")]
    common = [k for k in a if k in init and init[k].shape == a[k].shape]
    if not common:
        return [(False, "weights: no tensor of the initial model matches the trained ones by name and shape")]
    moved2 = diff2 = 0.0
    worst = (0.0, "")
    for k in common:
        ref_k, got_k, init_k = a[k].double(), b[k].double(), init[k].double()
        moved, diff = (ref_k - init_k).norm().item(), (got_k - ref_k).norm().item()
        moved2, diff2 = moved2 + moved**2, diff2 + diff**2
        ratio = diff / moved if moved > 0 else (0.0 if diff == 0 else math.inf)
        worst = max(worst, (ratio, k))
    moved, diff = math.sqrt(moved2), math.sqrt(diff2)
    ratio = diff / moved if moved > 0 else math.inf
    return [(moved > 0 and ratio <= weight_rtol,
             f"weights: |resumed - uninterrupted| = {ratio:.2%} of |uninterrupted - initial| "
             f"(at most {weight_rtol:.0%}; {len(common)} tensors, training moved them by {moved:.3g})"),
            (worst[0] <= tensor_rtol,
             f"weights: the furthest tensor, {worst[1]}, is off by {worst[0]:.2%} of its movement "
             f"(at most {tensor_rtol:.0%})")]


def _loss_check(h_ref: dict, h_got: dict, loss_rtol: float) -> tuple[bool, str]:
    """Each logged step's loss of the resumed run within ``loss_rtol`` of the uninterrupted run's."""
    if not (h_ref["step"] == h_got["step"] and len(h_ref["loss"]) == len(h_got["loss"])):
        return False, f"losses: the runs logged different steps ({len(h_ref['step'])} vs {len(h_got['step'])})"
    off = [(s, x, y) for s, x, y in zip(h_ref["step"], h_ref["loss"], h_got["loss"])
           if not abs(y - x) <= loss_rtol * abs(x)]
    return (not off and len(h_ref["step"]) > 0,
            f"losses: {len(h_ref['step']) - len(off)} of {len(h_ref['step'])} steps within {loss_rtol:.0%}"
            + (f"; step {off[0][0]}: {off[0][2]:.4f} vs {off[0][1]:.4f}" if off else ""))


def _resume_check(log: str, h_got: dict, same_steps: bool) -> tuple[bool, str]:
    """The resumed process's log: a 'resumed from' line, then the run's last steps (after step 1)."""
    from sftlib.logs import parse_log

    text = Path(log).read_text(errors="replace") if Path(log).exists() else ""
    steps = [int(s) for s in parse_log(text).query("kind == 'sft_step'")["step"].dropna()]
    resumed = "resumed from" in text
    tail_ok = bool(steps) and steps[0] > 1 and steps == h_got["step"][-len(steps):] and same_steps
    return (resumed and tail_ok,
            "resume: " + (f"the resumed process ran steps {steps[0]}-{steps[-1]} of {h_got['step'][-1]}"
                          if steps and h_got["step"] else "the resumed process logged no step")
            + ("" if resumed else "; its log has no 'resumed from' line (it started afresh)")
            + ("" if tail_ok or not steps else "; not the last steps of the run, after step 1"))


def compare_checks(ref: str, got: str, initial: str, log: str | None, weight_rtol: float = WEIGHT_RTOL,
                   tensor_rtol: float = TENSOR_RTOL, loss_rtol: float = LOSS_RTOL) -> list[tuple[bool, str]]:
    """Each check of a resumed run (``got``) against the uninterrupted one (``ref``), as (passed, line).

    GPU kernels are not bitwise deterministic, so the weights are compared relative to how far training
    moved them from ``initial``: a resume that restored nothing (the initial weights, or training from the
    start again after the checkpoint) is about as far from ``ref`` as ``ref`` is from ``initial``."""
    checks = _weight_checks(_weights(ref), _weights(got), _weights(initial), weight_rtol, tensor_rtol)
    if len(checks) == 1:  # the weights cannot be compared at all
        return checks
    h_ref, h_got = _history(ref), _history(got)
    checks.append(_loss_check(h_ref, h_got, loss_rtol))
    if log is not None:
        same_steps = h_ref["step"] == h_got["step"] and len(h_ref["loss"]) == len(h_got["loss"])
        checks.append(_resume_check(log, h_got, same_steps))
    return checks


def compare(ref: str, got: str, initial: str, log: str | None = None, **tolerances) -> int:
    """0 when every check passes; prints one line per check either way."""
    try:
        checks = compare_checks(ref, got, initial, log, **tolerances)
    except (OSError, KeyError, ValueError) as err:  # a missing folder or file: the resumed run did not finish
        checks = [(False, f"cannot compare: {err}")]
    for ok, line in checks:
        print(f"{'PASS' if ok else 'FAIL'} {line}")
    return 0 if all(ok for ok, _ in checks) else 1


# ---------------------------------------------------------------------------------------------- hybrid engine

REFUSAL = "error: the hybrid engine cannot run "  # sftlib.lessons.hybrid_engine.check_injection's line


def hybrid_command(model: str, dtype: str, python: str | None = None) -> list[str]:
    """The lesson's command line, as the row runs it."""
    return [python or sys.executable, "-m", "sftlib.lessons.hybrid_engine", "--model_name_or_path", model,
            "--dtype", dtype]


def hybrid_verdict(returncode: int, stdout: str, stderr: str) -> tuple[bool, str]:
    """Did the lesson behave? It generates (exit 0), or, where the model cannot take DeepSpeed's inference
    layer (the pinned versions), refuses in one line with exit 2 before DeepSpeed starts. Anything
    else, a traceback above all, fails."""
    err = stderr.strip().splitlines()
    if returncode == 0 and "DeepSpeedHybridEngine generated: " in stdout:
        return True, "generated through DeepSpeed's inference kernels"
    if returncode == 2 and len(err) == 1 and err[0].startswith(REFUSAL):
        return True, "refused in one line before DeepSpeed started: " + err[0].removeprefix("error: ")[:110] + " ..."
    return False, f"exit status {returncode}, {len(err)} stderr line(s); last: {(err or [''])[-1][:120]}"


def hybrid(model: str, dtype: str) -> int:
    """Run the lesson once and print what it did (``hybrid_verdict``) as the last line; 0 when it behaved."""
    cmd = hybrid_command(model, dtype)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    ok, line = hybrid_verdict(proc.returncode, proc.stdout, proc.stderr)
    print(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}{'PASS' if ok else 'FAIL'} {line}")
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------- table

def memory_mib(text: str) -> list[float]:
    """The numbers in an nvidia-smi memory trace, one a line; anything else ("[N/A]", "[Not Supported]",
    "No devices were found", a cut-off line) is skipped."""
    values = []
    for line in text.splitlines():
        try:
            value = float(line.strip().split(",")[0])
        except ValueError:
            continue
        if math.isfinite(value) and value >= 0:
            values.append(value)
    return values


def _read_row(path: Path) -> dict:
    try:
        row = json.loads(path.read_text())
        return {"n": int(row.get("n", 0)), "name": str(row["name"]), "rc": int(row.get("rc", 1)),
                "log": row.get("log", ""), "mem": row.get("mem", ""), "skip": row.get("skip"),
                "what": str(row.get("what") or "")}
    except (OSError, ValueError, KeyError, TypeError) as err:
        return {"n": 10**6, "name": path.name.removesuffix(".row.json"), "rc": 1, "log": "", "mem": "", "skip": None,
                "broken": f"unreadable row record: {type(err).__name__}"}


def measured(row: dict, steps, all_steps: int, log: str) -> str:
    """What a row measured: its description (``what``, from gpu_smoke.sh), and the steps its rates are the
    median of, or what its checks found (the ``PASS``/``FAIL`` lines a check prints)."""
    what = row.get("what") or row["name"]
    if len(steps):
        first, last = int(steps["step"].iloc[0]), int(steps["step"].iloc[-1])
        return f"{what}; median of steps {first}-{last} of {all_steps}"
    checks = [line for line in log.splitlines() if line.startswith(("PASS ", "FAIL "))]
    if len(checks) == 1:
        detail = checks[0].split(" ", 1)[1]
        return f"{what}: {detail[:90]}{' ...' if len(detail) > 90 else ''}"
    if checks:
        return f"{what}: {sum(c.startswith('PASS ') for c in checks)} of {len(checks)} checks passed"
    return what


def _result(row: dict) -> str:
    if row.get("broken"):
        return f"FAIL ({row['broken']})"
    if row["skip"]:
        return f"skipped: {row['skip']}"
    return {0: "PASS", 124: "FAIL (timed out)", 125: "SKIPPED (time budget)",
            137: "FAIL (killed after the time limit)"}.get(row["rc"], f"FAIL (rc {row['rc']})")


def table(out: str, peak_tflops: float) -> str:
    """One markdown row per ``*.row.json`` that gpu_smoke.sh wrote (name, what, rc, log, memory trace)."""
    from sftlib.logs import parse_log

    lines = ["| row | measured | samples/s | TFLOPs | MFU | peak GPU memory GiB | result |",
             "|---|---|---|---|---|---|---|"]
    for row in sorted((_read_row(p) for p in Path(out).glob("*.row.json")), key=lambda r: (r["n"], r["name"])):
        log = Path(row["log"]).read_text(errors="replace") if row["log"] and Path(row["log"]).is_file() else ""
        df = parse_log(log + "\n")
        every = df[df.kind == "sft_step"]
        steps = every.iloc[2:] if len(every) > 4 else every  # the first steps include warm-up and JIT builds
        rates, tflops = steps["samples_per_s"].dropna(), steps["tflops"].dropna()
        rate = f"{rates.median():.1f}" if len(rates) else "-"
        tf = tflops.median() if len(tflops) else float("nan")
        mem = memory_mib(Path(row["mem"]).read_text(errors="replace")) if row["mem"] and Path(row["mem"]).is_file() \
            else []
        peak = f"{max(mem) / 1024:.1f}" if mem else "-"
        tf_text, mfu = (f"{tf:.1f}", f"{100 * tf / peak_tflops:.1f}%") if tf == tf else ("-", "-")
        what = measured(row, steps, len(every), log) if not row["skip"] and not row.get("broken") \
            else row.get("what") or row["name"]
        lines.append(f"| {row['name']} | {what} | {rate} | {tf_text} | {mfu} | {peak} | {_result(row)} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- command line

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/gpu_smoke_tools.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("preflight", help="torch's CUDA, the GPU, bf16 or not, nvcc or not; exit 2 without a GPU")
    m = sub.add_parser("models", help="the ~125M models, fresh weights, toy tokenizer")
    m.add_argument("out")
    c = sub.add_parser("compare", help="a killed-and-resumed run against the uninterrupted one")
    c.add_argument("ref", help="the uninterrupted run's output folder")
    c.add_argument("got", help="the resumed run's output folder")
    c.add_argument("--initial", required=True, help="the model folder both runs started from")
    c.add_argument("--log", required=True, help="the resumed run's log (its 'resumed from' and step lines)")
    c.add_argument("--weight_rtol", type=float, default=WEIGHT_RTOL)
    c.add_argument("--tensor_rtol", type=float, default=TENSOR_RTOL)
    c.add_argument("--loss_rtol", type=float, default=LOSS_RTOL)
    h = sub.add_parser("hybrid", help="the hybrid-engine lesson on the GPU: generates, or refuses in one line")
    h.add_argument("model")
    h.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"))
    t = sub.add_parser("table", help="one markdown row per OUT/*.row.json")
    t.add_argument("out")
    t.add_argument("peak_tflops", nargs="?", type=float, default=989.0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.command == "preflight":
        return preflight()
    if args.command == "models":
        make_models(args.out)
        return 0
    if args.command == "hybrid":
        return hybrid(args.model, args.dtype)
    if args.command == "compare":
        return compare(args.ref, args.got, args.initial, args.log, weight_rtol=args.weight_rtol,
                       tensor_rtol=args.tensor_rtol, loss_rtol=args.loss_rtol)
    print(table(args.out, args.peak_tflops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
