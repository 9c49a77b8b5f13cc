"""sftlib beside a peer: the same toy rows and tiny OPT through TRL's ``SFTTrainer`` and ``sftlib.train``.

Both train one epoch of the toy train set (``prompt + chosen``, EOS appended, loss on every token),
fp32, one CPU process, micro batch 8, each batch padded to its longest sample (sftlib:
``--dynamic_padding``), AdamW. The rate compared is the median per-step samples/s after the first
two steps (sftlib's from its log lines, TRL's from a callback timing each optimizer step), so
start-up and evaluation do not count; peak RSS is each run's own process.

Needs TRL (``pip install -e .[peer]``: trl pinned in pyproject.toml); without it, says so and exits 0.

    OMP_NUM_THREADS=2 python bench/bench_peer_trl.py           # about 2-3 minutes on 2 loaded cores

Explained in notebooks/06_hybrid_engine_and_logs.ipynb.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_train_throughput import machine, run_train, table, write_report  # noqa: E402

COLUMNS = [("trainer", "trainer", ""), ("steps", "steps", ""), ("samples/s (median step)", "samples_per_s", ".1f"),
           ("peak RSS GiB", "peak_gib", ".2f"), ("wall s", "wall_s", ".0f")]


def run_trl(batch: int, max_seq_len: int) -> dict:
    """One epoch of TRL's SFTTrainer in this process."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from sftlib.lessons.toy import ensure_toy_world, load_rows

    world = ensure_toy_world(("opt",))
    tok = AutoTokenizer.from_pretrained(str(world["opt"]))
    texts = [r["prompt"] + r["chosen"] for r in load_rows(world["train"])]
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    torch.manual_seed(1234)
    model = AutoModelForCausalLM.from_pretrained(str(world["opt"]), dtype=torch.float32)
    config = SFTConfig(output_dir=tempfile.mkdtemp(prefix="sftlib_trl_"), per_device_train_batch_size=batch,
                       num_train_epochs=1, learning_rate=1e-3, lr_scheduler_type="cosine", adam_beta2=0.95,
                       max_length=max_seq_len, packing=False, padding_free=False, completion_only_loss=False,
                       report_to=[], save_strategy="no", logging_steps=1000, use_cpu=True, seed=1234,
                       dataloader_num_workers=0, disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_dict({"text": texts}),
                         processing_class=tok, callbacks=[Clock()])
    t = time.time()
    trainer.train()
    steps = [b - a for a, b in zip(stamps, stamps[1:])][2:]
    return {"trainer": f"TRL {importlib.import_module('trl').__version__} SFTTrainer", "steps": len(stamps),
            "samples_per_s": batch / statistics.median(steps), "wall_s": time.time() - t,
            "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max_seq_len", type=int, default=256)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "peer_trl.md"))
    args = p.parse_args(argv)
    if importlib.util.find_spec("trl") is None:
        print("skipped: trl is not installed (pip install -e .[peer] installs the pinned version)")
        return 0
    if args.child:
        print("RESULT", json.dumps(run_trl(args.batch, args.max_seq_len)))
        return 0
    from sftlib.lessons.toy import ensure_toy_world

    lines = ["## Machine", "", machine(), ""]
    print("\n".join(lines), flush=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, __file__, "--child", "--batch", str(args.batch), "--max_seq_len", str(args.max_seq_len)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"TRL run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    trl_row = json.loads(proc.stdout.rsplit("RESULT", 1)[1])
    ours = run_train(ensure_toy_world(("opt",)), 1, 0, "dynamic", args.max_seq_len, args.batch,
                     tempfile.mkdtemp(prefix="sftlib_peer_"), 0)
    ours["trainer"] = "sftlib.train (DeepSpeed ZeRO-0)"
    rows = [ours, trl_row]
    lines += [f"## sftlib vs TRL: toy OPT, fp32, 1 CPU process, micro batch {args.batch}, one epoch", "",
              table(rows, COLUMNS), "",
              f"sftlib / TRL samples/s: {ours['samples_per_s'] / trl_row['samples_per_s']:.2f}x"]
    write_report(lines, "bench/bench_peer_trl.py", argv, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
