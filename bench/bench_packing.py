"""Packing layouts on this CPU: padding-free (``position_ids`` only) vs the 4-D block mask, at 2048 and 4096 tokens.

Each configuration runs in its own process (so its peak resident memory is its own): the toy Llama
(which honours restarting ``position_ids``; OPT does not, see ``sftlib.collate``) trains a few
AdamW steps, fp32, on rows of the toy train set packed to ``L`` tokens, ``--rows`` rows per micro
batch. Reported: samples/s over the timed steps (after one warm-up step; collation included, as in
training), TFLOPs (``sftlib.perf.StepMeter``: attention counted block-diagonally, each sample's length
squared), how much counting each row's whole square would overstate them, peak RSS, and the size of
the mask the collator builds and ships with each batch.

    OMP_NUM_THREADS=2 python bench/bench_packing.py            # about 2-4 minutes on 2 loaded cores
    python bench/bench_packing.py --lengths 512 --steps 2       # a quick look

Explained in notebooks/01_dataset_abstraction.ipynb.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_train_throughput import machine, table, write_report  # noqa: E402

COLUMNS = [("layout", "mode", ""), ("tokens/row", "length", ""), ("rows/batch", "rows", ""),
           ("timed steps", "steps", ""), ("samples/s", "samples_per_s", ".1f"), ("tokens/s", "tokens_per_s", ".0f"),
           ("TFLOPs", "tflops", ".4f"), ("row-square count / block-diagonal", "square_over_block", ".2f"),
           ("mask MiB/batch", "mask_mib", ".1f"), ("peak RSS GiB", "peak_gib", ".2f")]


def run_one(mode: str, length: int, rows: int, steps: int) -> dict:
    """Train ``steps`` timed AdamW steps in this process; returns the rates and this process's peak RSS."""
    import itertools

    import torch
    from torch.utils.data import DataLoader
    from transformers import AutoModelForCausalLM

    from sftlib import collate, data
    from sftlib.lessons.toy import ensure_toy_world
    from sftlib.model import load_hf_tokenizer
    from sftlib.perf import StepMeter, train_flops

    world = ensure_toy_world(("llama",))
    tok = load_hf_tokenizer(str(world["llama"]))
    dyn, _ = data.create_prompt_dataset(0, [str(world["data"])], "10,0,0", tempfile.mkdtemp(prefix="sftlib_pack_"),
                                        1, 1234, tok, 512, end_of_conversation_token=tok.eos_token,
                                        pad_to_max_len=False)
    packed = collate.PackedDataset(dyn, length)
    loader = DataLoader(packed, batch_size=rows, collate_fn=collate.PackingCollator(tok.pad_token_id, mode=mode))
    batches = (batch for _ in itertools.count() for batch in loader)  # collated each step, as in training
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(world["llama"]), attn_implementation="sdpa").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    meter, square = StepMeter(model), 0.0  # square: the FLOPs if attention spanned each whole row
    tokens = mask_bytes = 0
    t0 = 0.0
    for step in range(steps + 1):
        if step == 1:  # the first step is warm-up
            t0 = time.perf_counter()
            meter.reset()
        batch = dict(next(batches))
        n_tokens = int(batch.pop("num_tokens"))
        mask = batch.get("attention_mask")
        mask_bytes = max(mask_bytes, mask.nbytes if mask is not None else 0)
        model(**batch, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 1:
            meter.add(batch, n_tokens)
            square += train_flops(meter.dims, *batch["input_ids"].shape, trainable=meter.trainable)
            tokens += n_tokens
    seconds = time.perf_counter() - t0
    counts = meter.totals()
    return {"mode": mode, "length": length, "rows": rows, "steps": steps,
            "samples_per_s": counts["samples"] / seconds, "tokens_per_s": tokens / seconds,
            "tflops": counts["flops"] / seconds / 1e12, "square_over_block": square / counts["flops"],
            "mask_mib": mask_bytes / 2**20, "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096])
    p.add_argument("--rows", type=int, default=2, help="packed rows per micro batch")
    p.add_argument("--steps", type=int, default=4, help="timed steps per configuration (after one warm-up)")
    p.add_argument("--modes", nargs="+", default=["mask", "padding_free"], choices=["mask", "padding_free", "flatten"])
    p.add_argument("--child", nargs=2, metavar=("MODE", "LENGTH"), help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "packing.md"))
    args = p.parse_args(argv)
    if args.child:
        print("RESULT", json.dumps(run_one(args.child[0], int(args.child[1]), args.rows, args.steps)))
        return 0
    lines = ["## Machine", "", machine(), ""]
    print("\n".join(lines), flush=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    results = []
    for length in args.lengths:
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--child", mode, str(length), "--rows", str(args.rows),
                   "--steps", str(args.steps)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
            results.append(json.loads(proc.stdout.rsplit("RESULT", 1)[1]))
            print(table([results[-1]], COLUMNS).splitlines()[-1], flush=True)
    lines += [f"## Packing layouts, toy Llama, fp32, sdpa ({args.rows} rows per micro batch)", "",
              table(results, COLUMNS), ""]
    for length in args.lengths:
        by = {r["mode"]: r for r in results if r["length"] == length}
        if "mask" in by and "padding_free" in by:
            free, mask = by["padding_free"], by["mask"]
            lines.append(f"- {length} tokens/row: padding-free {free['samples_per_s'] / mask['samples_per_s']:.2f}x "
                         f"the samples/s of the 4-D mask, peak RSS {free['peak_gib'] - mask['peak_gib']:+.2f} GiB")
    write_report(lines, "bench/bench_packing.py", argv, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
