"""Measure sftlib's step-1 speed on this machine and print a results table with the machine's description.

Three parts, each a real ``sftlib.train`` run (or a tokenizer loop) on the toy set:

1. data preparation: DeepSpeed-Chat's one-tokenizer-call-per-sample recipe vs one batched call;
2. batching at ``--max_seq_len 512``: pad-to-max (the original), ``--dynamic_padding``, ``--packing``;
3. ZeRO stages 0/1/2/3 on one and two CPU ranks (dynamic padding), with each run's peak memory.

Rates come from the training log itself, parsed with ``sftlib.logs``: the median over the steps
(after the first two) of sftlib's per-step samples/s, tokens/s and TFLOPs per device; DeepSpeed's
own throughput timer (``RunningAvgSamplesPerSec``, which counts packed rows, not samples) is shown
beside them as a cross-check. Peak memory is the largest resident set of any process of the run.

    OMP_NUM_THREADS=2 python bench/bench_train_throughput.py            # about 5-10 minutes on 2 cores
    python bench/bench_train_throughput.py --parts batching --max_seq_len 128   # a quick look

Explained in notebooks/06_hybrid_engine_and_logs.ipynb.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sftlib.logs import parse_log  # noqa: E402

WRAP = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
        "sys.exit(r.returncode)")


def machine() -> str:
    """CPU model, cores, memory, library versions, thread setting and load (contention shows here)."""
    import deepspeed
    import torch
    import transformers

    cpu = platform.processor() or "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, torch {torch.__version__}, deepspeed {deepspeed.__version__}, "
            f"transformers {transformers.__version__}; load average {load} at start")


def bench_data_prep(world: dict, repeat: int = 10) -> list[dict]:
    """Tokenize the toy rows (``repeat`` times over): one call per sample vs one batched call."""
    from transformers import AutoTokenizer

    from sftlib.data import tokenize_one_at_a_time
    from sftlib.lessons.toy import load_rows

    tok = AutoTokenizer.from_pretrained(world["opt"])
    texts = [r["prompt"] + r["chosen"] for r in load_rows(world["train"])] * repeat
    t = time.perf_counter()
    tokenize_one_at_a_time(texts, tok, 512)
    one = time.perf_counter() - t
    t = time.perf_counter()
    tok(texts, truncation=True, max_length=512)
    batched = time.perf_counter() - t
    return [{"what": "one call per sample, padded to 512 (DeepSpeed-Chat)", "rows": len(texts),
             "seconds": one, "rows_per_s": len(texts) / one},
            {"what": "one batched call, unpadded (sftlib)", "rows": len(texts), "seconds": batched,
             "rows_per_s": len(texts) / batched}]


def run_train(world: dict, ranks: int, zero: int, batching: str, max_seq_len: int, batch: int,
              cache: str, port: int) -> dict:
    """One ``sftlib.train`` epoch; returns the log's rates, peak memory and wall time."""
    flags = {"pad-to-max": [], "dynamic": ["--dynamic_padding"], "packing": ["--packing"]}[batching]
    args = ["--model_name_or_path", str(world["opt"]), "--data_path", str(world["data"]), "--data_split", "10,0,0",
            "--max_seq_len", str(max_seq_len), "--per_device_train_batch_size", str(batch), "--dtype", "fp32",
            "--zero_stage", str(zero), "--data_output_path", cache, "--deepspeed_log_level", "info", *flags]
    if ranks == 1:
        cmd = [sys.executable, "-m", "sftlib.train", *args]
    else:
        launcher = str(Path(sys.executable).parent / "deepspeed")
        cmd = [launcher, "--num_gpus", str(ranks), "--master_port", str(port), "--module", "sftlib.train", *args]
    threads = str(max(1, (os.cpu_count() or 1) // ranks))
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", threads), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    t = time.time()
    proc = subprocess.run([sys.executable, "-c", WRAP, *cmd], capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.time() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    peak_kb = int(proc.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
    df = parse_log(proc.stdout + "\n" + proc.stderr)
    steps = df[df.kind == "sft_step"]
    steps = steps.iloc[2:] if len(steps) > 10 else steps.iloc[1:]  # the first steps include warm-up
    timer = df[df.kind == "throughput"]
    return {"ranks": ranks, "zero": zero, "batching": batching, "threads": env["OMP_NUM_THREADS"],
            "steps": int((df.kind == "sft_step").sum()),
            "samples_per_s": steps["samples_per_s"].median(), "tokens_per_s": steps["tokens_per_s"].median(),
            "tflops": steps["tflops"].median(),
            "ds_samples_per_s": timer["avg_samples_per_s"].iloc[-1] if len(timer) else float("nan"),
            "peak_gib": peak_kb / 2**20, "wall_s": wall}


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A markdown table: (header, key, format) per column."""
    head = "| " + " | ".join(h for h, _, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(format(r[k], f) if f else str(r[k]) for _, k, f in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def write_report(lines: list[str], script: str, argv: list[str] | None, out: str) -> None:
    """Add the command line to a report that starts with the machine header, write it to ``out``, print the rest."""
    lines += ["", f"Command: `python {script} {' '.join(sys.argv[1:] if argv is None else argv)}` "
              f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})", ""]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("\n".join(lines))
    print("\n".join(lines[4:]))


TRAIN_COLUMNS = [("ranks", "ranks", ""), ("ZeRO", "zero", ""), ("batching", "batching", ""),
                 ("threads/rank", "threads", ""), ("steps", "steps", ""), ("samples/s", "samples_per_s", ".1f"),
                 ("tokens/s", "tokens_per_s", ".0f"), ("TFLOPs/device", "tflops", ".4f"),
                 ("DeepSpeed timer samples/s", "ds_samples_per_s", ".1f"), ("peak RSS GiB", "peak_gib", ".2f"),
                 ("wall s", "wall_s", ".0f")]


def batching_section(world, args, runs: dict, cache: str) -> list[str]:
    """Pad-to-max, dynamic padding and packing on one rank, ZeRO 0: the table's lines (runs kept in ``runs``)."""
    for batching in ("pad-to-max", "dynamic", "packing"):
        batch = args.packing_batch_size if batching == "packing" else args.per_device_train_batch_size
        runs[(1, 0, batching)] = run_train(world, 1, 0, batching, args.max_seq_len, batch, cache, 0)
        print(table([runs[(1, 0, batching)]], TRAIN_COLUMNS).splitlines()[-1], flush=True)
    base = runs[(1, 0, "pad-to-max")]["samples_per_s"]
    ratio = {b: runs[(1, 0, b)]["samples_per_s"] / base for b in ("dynamic", "packing")}
    return [f"## Batching at max_seq_len {args.max_seq_len} (1 rank, ZeRO 0, micro batch "
            f"{args.per_device_train_batch_size}; packing {args.packing_batch_size} rows of up to "
            f"{args.max_seq_len} tokens)", "",
            table([runs[(1, 0, b)] for b in ("pad-to-max", "dynamic", "packing")], TRAIN_COLUMNS), "",
            f"dynamic padding: {ratio['dynamic']:.1f}x the samples/s of pad-to-max; "
            f"packing: {ratio['packing']:.1f}x", ""]


def zero_section(world, args, runs: dict, cache: str) -> list[str]:
    """ZeRO 0-3 on one and two CPU ranks with dynamic padding: the table's lines (reusing runs already made)."""
    for ranks in (1, 2):
        for zero in (0, 1, 2, 3):
            if (ranks, zero, "dynamic") not in runs:
                runs[(ranks, zero, "dynamic")] = run_train(world, ranks, zero, "dynamic", args.max_seq_len,
                                                           args.per_device_train_batch_size, cache, 29640 + zero)
            print(table([runs[(ranks, zero, "dynamic")]], TRAIN_COLUMNS).splitlines()[-1], flush=True)
    return [f"## ZeRO stages, one and two CPU ranks (dynamic padding, max_seq_len {args.max_seq_len})", "",
            table([runs[(r, z, "dynamic")] for r in (1, 2) for z in (0, 1, 2, 3)], TRAIN_COLUMNS), ""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", default=["data", "batching", "zero"], choices=["data", "batching", "zero"])
    p.add_argument("--max_seq_len", type=int, default=512)
    p.add_argument("--per_device_train_batch_size", type=int, default=8)
    p.add_argument("--packing_batch_size", type=int, default=2,
                   help="packed rows per micro batch (a row holds ~25 toy samples at 512, so 8 rows = 2 steps)")
    p.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "train_throughput.md"))
    args = p.parse_args(argv)
    from sftlib.lessons.toy import ensure_toy_world

    world = ensure_toy_world(("opt",))
    lines = ["## Machine", "", machine(), ""]
    print("\n".join(lines), flush=True)
    cache = tempfile.mkdtemp(prefix="sftlib_bench_")
    if "data" in args.parts:
        rows = bench_data_prep(world)
        lines += ["## Data preparation (toy rows x10)", "",
                  table(rows, [("recipe", "what", ""), ("rows", "rows", ""), ("seconds", "seconds", ".2f"),
                               ("rows/s", "rows_per_s", ".0f")]), ""]
        print("\n".join(lines[-4:]), flush=True)
    runs = {}
    if "batching" in args.parts:
        lines += batching_section(world, args, runs, cache)
    if "zero" in args.parts:
        lines += zero_section(world, args, runs, cache)
    lines += [f"Command: `{' '.join(['python', 'bench/bench_train_throughput.py', *(argv or sys.argv[1:])])}` "
              f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'cores per rank')}); "
              f"peak of this script itself {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"]
    text = "\n".join(lines)
    print("\n" + text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
