"""Benchmark: prepare N toy rows for phase 1, batched (sftlib) vs one at a time (DeepSpeed-Chat).

Both paths start from the same json-lines file and end with a cache on disk:

- one at a time: the original recipe (one tokenizer call per row, padded to ``max_seq_len``,
  int64 tensors, the list pickled with ``torch.save``), as ``create_dataset_split`` +
  ``create_prompt_dataset`` do;
- batched: ``sftlib.data.create_prompt_dataset`` with a cold cache (the rows read once, batched fast
  tokenization through the tokenizer's Rust backend straight into Arrow, in worker processes from
  50,000 rows; unpadded int32 ids saved as Arrow).

It checks that both give the same tensors (on a sample of rows) and prints both times and both
cache sizes. Run::

    OMP_NUM_THREADS=1 python bench/bench_data_prep.py            # 50,000 rows x max_seq_len 512
    OMP_NUM_THREADS=1 python bench/bench_data_prep.py --rows 20000   # issue 21's set (target: 25x)
    python bench/bench_data_prep.py --rows 2000 --max_seq_len 128

Explained in notebooks/01_dataset_abstraction.ipynb.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def one_at_a_time(data_dir, out_dir, tokenizer, max_seq_len, seed=1234) -> tuple[list, Path]:
    """DeepSpeed-Chat's phase-1 path: raw rows -> per-row tokenization -> torch.save (pickle)."""
    from sftlib import data

    raw = data.get_raw_dataset(str(data_dir), str(out_dir), seed, 0)
    rows = raw.get_train_data()
    index = data.get_raw_dataset_split_index(0, str(out_dir), raw.dataset_name_clean, seed, "train", "10,0,0", 0,
                                             len(rows))
    chosen = []
    for i in index:
        text = raw.get_prompt_and_chosen(rows[i])
        if text is not None:
            tok = tokenizer(text + tokenizer.eos_token, max_length=max_seq_len, padding="max_length",
                            truncation=True, return_tensors="pt")
            chosen.append({"input_ids": tok["input_ids"].squeeze(0),
                           "attention_mask": tok["attention_mask"].squeeze(0)})
    path = Path(out_dir) / "traindata_original.pt"
    torch.save(chosen, path)
    return chosen, path


def batched(data_dir, out_dir, tokenizer, max_seq_len, seed=1234):
    from sftlib import data

    train, _ = data.create_prompt_dataset(0, [str(data_dir)], "10,0,0", str(out_dir), 1, seed, tokenizer,
                                          max_seq_len, end_of_conversation_token=tokenizer.eos_token)
    return train, next(Path(out_dir).glob("prompt_dataset_*/"))


def write_rows(folder: Path, n: int) -> None:
    from sftlib import data
    from sftlib.lessons.toy import ensure_toy_world, make_toy_rows

    base = data.read_json_rows(ensure_toy_world(("opt",))["data"] / "train.json")
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n), ("eval", max(1, n // 50))):
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in make_toy_rows(base, count):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def mb(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:,.1f} MB"


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the tokenizing workers)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, *args):
    """(fn(*args), wall seconds, CPU seconds); on a shared machine the CPU seconds are the steadier number."""
    gc.collect()
    wall, cpu = time.perf_counter(), cpu_seconds()
    out = fn(*args)
    return out, time.perf_counter() - wall, cpu_seconds() - cpu


def report(result: dict, checked: int) -> None:
    r = result
    print(f"rows {r['rows']:,} | max_seq_len {r['max_seq_len']} | {r['cores']} cores, OMP_NUM_THREADS="
          f"{r['omp_threads']}, load {r['load']:.1f}")
    print(f"one at a time (DeepSpeed-Chat): {r['one_at_a_time_s']:8.2f} s ({r['one_at_a_time_cpu_s']:.2f} CPU s) | "
          f"cache {mb(r['one_at_a_time_cache_bytes'])} (torch.save pickle, int64 padded)")
    print(f"batched (sftlib):               {r['batched_s']:8.2f} s ({r['batched_cpu_s']:.2f} CPU s) | "
          f"cache {mb(r['batched_cache_bytes'])} (Arrow, int32 unpadded)")
    print(f"speed-up {r['speedup']:.1f}x ({r['cpu_speedup']:.1f}x in CPU seconds); tensors identical on "
          f"{checked} checked rows")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--max_seq_len", type=int, default=512)
    p.add_argument("--check", type=int, default=2000, help="rows compared tensor by tensor")
    p.add_argument("--workdir", type=str, default=None, help="default: a temporary folder, removed afterwards")
    args = p.parse_args(argv)

    import datasets

    from sftlib import data
    from sftlib.lessons.toy import ensure_toy_world
    from sftlib.model import load_hf_tokenizer

    datasets.disable_progress_bars()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_data_"))
    try:
        write_rows(work / "rows", args.rows)
        tok = load_hf_tokenizer(str(ensure_toy_world(("opt",))["opt"]))
        # Batched first: the one-at-a-time result keeps ~100k tensors alive, and Python's garbage
        # collector would then slow down whatever runs after it.
        (ours, cache_dir), t_batched, c_batched = timed(batched, work / "rows", work / "sftlib", tok, args.max_seq_len)
        (original, original_file), t_one, c_one = timed(one_at_a_time, work / "rows", work / "original", tok,
                                                        args.max_seq_len)
        assert len(ours) == len(original)
        step = max(1, len(ours) // max(1, args.check))
        for i in range(0, len(ours), step):
            assert torch.equal(ours[i]["input_ids"], original[i]["input_ids"]), i
            assert torch.equal(ours[i]["attention_mask"], original[i]["attention_mask"]), i
        result = {"rows": len(ours), "max_seq_len": args.max_seq_len, "one_at_a_time_s": t_one,
                  "batched_s": t_batched, "speedup": t_one / t_batched, "one_at_a_time_cpu_s": c_one,
                  "batched_cpu_s": c_batched, "cpu_speedup": c_one / c_batched,
                  "one_at_a_time_cache_bytes": data.cache_size_bytes(original_file),
                  "batched_cache_bytes": data.cache_size_bytes(cache_dir), "cores": os.cpu_count(),
                  "omp_threads": os.environ.get("OMP_NUM_THREADS", "unset"), "load": os.getloadavg()[0]}
        report(result, len(range(0, len(ours), step)))
        return result
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
