"""Benchmark: seconds from ``python -m sftlib.train`` starting to its first optimizer step, on a big local set.

One run compares source trees side by side: by default the commit before issue 21's data changes
(``30c456f``: validation parsed every local file on every rank, the cache key hashed the bytes again,
a cache miss parsed them a third time, tokenizing went through ``datasets.map``) and the working tree.
Each tree trains the toy OPT model (one rank, CPU, fp32) on the same generated rows (the toy schema,
``--rows`` of them plus 256 eval rows), twice: with an empty cache (``cold``: check, tokenize, cache,
evaluate, first step) and again with the cache it built (``warm``: check, cache hit, evaluate, first
step). A run is stopped at its first ``step 1 |`` line. Run::

    python bench/bench_first_step.py                          # 400,000 rows, 30c456f vs the working tree
    python bench/bench_first_step.py --rows 50000 --trees . /path/to/other/tree --repeat 2

``--trees`` takes git refs (checked out into a temporary worktree) or folders holding a source tree.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "30c456f"  # the last commit before issue 21's data changes
LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
BUILT = re.compile(r"built dataset cache .*, ([0-9.]+) s\)")


def write_rows(folder: Path, n: int) -> None:
    """``n`` distinct toy rows (train.jsonl) and 256 more (eval.jsonl), as the toy world writes them."""
    sys.path.insert(0, str(ROOT))
    from sftlib.data import read_json_rows
    from sftlib.lessons.toy import ensure_toy_world, make_toy_rows

    rows = make_toy_rows(read_json_rows(ensure_toy_world(("opt",))["data"] / "train.json"), n + 256)
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows[:n]), ("eval", rows[n:])):
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in part)


def source_tree(spec: str, work: Path) -> tuple[Path, bool]:
    """(folder of the tree, whether it is a temporary worktree): a folder as it is, else a git ref checked out."""
    if Path(spec).is_dir() and (Path(spec) / "sftlib").is_dir():
        return Path(spec).resolve(), False
    folder = work / f"tree-{re.sub(r'[^A-Za-z0-9]', '_', spec)}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(folder), spec], check=True)
    return folder, True


def first_step(tree: Path, argv: list[str], timeout: float, extensions: Path) -> dict:
    """Start ``python -m sftlib.train argv`` in ``tree`` (one rank, CPU) and stop it at its first step line;
    returns the seconds to that line, to ``***** Running training *****`` (data, model and engine ready,
    before the first evaluation) and the cache build's own seconds (None on a cache hit)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(PYTHONPATH=str(tree), DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1",
               TORCH_EXTENSIONS_DIR=str(extensions))  # DeepSpeed's JIT-built CPU ops, this run's alone
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "sftlib.train", *argv], cwd=tree, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    build, ready, tail = None, None, []
    try:
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-20:]
            if BUILT.search(line):
                build = float(BUILT.search(line).group(1))
            if line.startswith("***** Running training *****"):
                ready = time.perf_counter() - t0
            if line.startswith("step 1 |"):
                wall = time.perf_counter() - t0
                return {"first_step_s": wall, "ready_s": ready, "build_s": build, "cpu_s": _stop(proc)}
            if time.perf_counter() - t0 > timeout:
                break
    finally:
        if proc.returncode is None:
            _stop(proc)
    raise RuntimeError(f"{tree}: no first step (exit {proc.returncode}):\n" + "\n".join(tail))


def _stop(proc) -> float:
    """Kill the run and its workers; returns the CPU seconds it used (with the children it waited for)."""
    os.killpg(proc.pid, signal.SIGKILL)
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = -signal.SIGKILL
    return usage.ru_utime + usage.ru_stime


def train_argv(rows: Path, cache: Path) -> list[str]:
    model = ROOT / "toy_world" / "opt-tiny"
    return ["--model_name_or_path", str(model), "--data_path", str(rows), "--data_split", "10,0,0",
            "--max_seq_len", "64", "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "64",
            "--dtype", "fp32", "--num_train_epochs", "1", "--data_output_path", str(cache)]


def measure(trees: list[tuple[str, Path]], rows: Path, work: Path, repeat: int, timeout: float) -> dict:
    """{tree: {"cold": best run, "warm": best run}}; trees alternate so that load drifts hit them alike.

    DeepSpeed JIT-builds a CPU op when a process group starts, and rebuilds it whenever another
    process on the machine built it with other flags (minutes of CPU): the runs use a private copy of
    the build folder, and one unmeasured run per tree on a few rows builds whatever is missing first."""
    extensions = work / "torch_extensions"
    if (Path.home() / ".cache" / "torch_extensions").is_dir():
        shutil.copytree(Path.home() / ".cache" / "torch_extensions", extensions, dirs_exist_ok=True)
    write_rows(work / "warmup", 300)
    for i, (_, tree) in enumerate(trees):
        first_step(tree, train_argv(work / "warmup", work / f"warmup-cache-{i}"), timeout, extensions)
    best: dict = {name: {} for name, _ in trees}
    for r in range(repeat):
        for kind in ("cold", "warm"):
            for name, tree in trees:
                cache = work / f"cache-{trees.index((name, tree))}-{r}"
                if kind == "cold":
                    shutil.rmtree(cache, ignore_errors=True)
                got = first_step(tree, train_argv(rows, cache), timeout, extensions)
                old = best[name].get(kind)
                best[name][kind] = got if old is None or got["first_step_s"] < old["first_step_s"] else old
    return best


def report(best: dict, n_rows: int) -> None:
    print(f"{n_rows:,} train rows (+256 eval) | toy OPT, one rank, CPU | {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'tree':<18} {'cold: first step':>17} {'ready':>7} {'build':>7} {'CPU':>7} | {'warm: first step':>17} "
          f"{'ready':>7} {'CPU':>7}")
    for name, runs in best.items():
        cold, warm = runs["cold"], runs["warm"]
        print(f"{name:<18} {cold['first_step_s']:>15.1f} s {cold['ready_s']:>5.1f} s {cold['build_s'] or 0:>5.1f} s "
              f"{cold['cpu_s']:>5.1f} s | {warm['first_step_s']:>15.1f} s {warm['ready_s']:>5.1f} s "
              f"{warm['cpu_s']:>5.1f} s")
    print("ready: '***** Running training *****' (data, model and engine built; the first evaluation follows); "
          "build: the cache build's own seconds; CPU: the run's CPU seconds to its first step")
    names = list(best)
    if len(names) >= 2:
        a, b = best[names[0]], best[names[-1]]
        ratio = {f"{kind} {what}": a[kind][key] / b[kind][key] for kind in ("cold", "warm")
                 for what, key in (("first step", "first_step_s"), ("ready", "ready_s"), ("CPU", "cpu_s"))}
        print(f"{names[-1]} vs {names[0]}, times faster: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items()))

def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=400_000, help="train rows generated (default: 400,000)")
    p.add_argument("--trees", nargs="+", default=[BEFORE, "."],
                   help=f"git refs or source folders, compared in this order (default: {BEFORE} .)")
    p.add_argument("--repeat", type=int, default=1, help="runs per tree and cache state; the fastest is shown")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds one run may take to its first step")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_first_step_"))
    made = []
    try:
        write_rows(work / "rows", args.rows)
        trees = []
        for spec in args.trees:
            folder, temporary = source_tree(spec, work)
            made += [folder] if temporary else []
            trees.append(("working tree" if folder == ROOT else spec, folder))
        best = measure(trees, work / "rows", work, args.repeat, args.timeout)
        report(best, args.rows)
        return best
    finally:
        for folder in made:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
