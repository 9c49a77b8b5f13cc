"""Same run, many ways: one seeded toy configuration trained under ZeRO 0-3, on one rank and two,
with and without gradient accumulation, padded, dynamically padded and packed, with LoRA; every run
is a real ``sftlib.train`` run, and each is compared with the one it should equal.

A *way* is one set of ``sftlib.train`` flags (``Way.argv``). ``run_ways`` runs a list of them: the
one-rank ways one after the other in one process, the two-rank ways in one ``deepspeed --num_gpus 2``
job (one thread per rank), each process running ``train.main`` once per way (ZeRO-3 ways last:
a ZeRO-3 run leaves ``zero.Init`` active in its process). ``compare`` puts two runs side by side:
the largest relative difference of their per-step losses and of their final weights.

    python -m sftlib.lessons.equivalence --plan PLAN.json   # PLAN: {"out": RESULTS.json, "ways": [...]}

Explained in notebooks/08_same_run_many_ways.ipynb.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

from sftlib.cli import run
from sftlib.dist import launcher_free_env


@dataclasses.dataclass(frozen=True)
class Way:
    """One way to train the same thing: world size, micro batch, accumulation, ZeRO stage, loss
    reduction, batching (``padded`` to --max_seq_len, ``dynamic``, ``packing[=MODE]``) and LoRA rank."""

    name: str
    ranks: int = 1
    micro: int = 16
    gas: int = 1
    zero: int = 0
    reduction: str = "mean"
    batching: str = "dynamic"
    lora_dim: int = 0
    model: str = "opt"
    epochs: int = 1

    def argv(self, setup: dict, out: Path) -> list[str]:
        """The ``sftlib.train`` command line of this way; ``setup``: the shared settings (``toy_setup``)."""
        args = ["--model_name_or_path", setup["models"][self.model], "--data_path", setup["data"],
                "--data_split", "10,0,0", "--data_output_path", str(out / "cache"), "--dtype", "fp32",
                "--max_seq_len", setup["max_seq_len"], "--dropout", 0, "--seed", setup["seed"],
                "--learning_rate", setup["lr"], "--lora_learning_rate", setup["lr"],
                "--lr_scheduler_type", "constant", "--num_train_epochs", self.epochs,
                "--per_device_train_batch_size", self.micro, "--per_device_eval_batch_size", 16,
                "--gradient_accumulation_steps", self.gas, "--zero_stage", self.zero,
                "--loss_reduction", self.reduction, "--output_dir", str(out / "model")]
        if self.batching == "dynamic":
            args.append("--dynamic_padding")
        elif self.batching.startswith("packing"):
            args += ["--packing", self.batching.partition("=")[2] or "auto"]
        if self.lora_dim:
            args += ["--lora_dim", self.lora_dim, "--lora_module_name", setup["lora_module"][self.model]]
        return [str(a) for a in args]


def toy_setup(work: Path, n_train: int, n_eval: int = 16, *, max_seq_len: int = 64, lr: float = 1e-3,
              seed: int = 1234, models: tuple[str, ...] = ("opt",)) -> dict:
    """The settings every way shares: the toy world's first ``n_train`` / ``n_eval`` rows written to
    ``work/data`` (a local train.json/eval.json folder), the toy models, sequence length, lr, seed."""
    from sftlib.lessons import toy

    paths = toy.ensure_toy_world(models)
    data = Path(work) / "data"
    data.mkdir(parents=True, exist_ok=True)
    source = Path(paths["data"])
    for name, n in (("train.json", n_train), ("eval.json", n_eval)):
        rows = source.joinpath(name).read_text(encoding="utf-8").splitlines(keepends=True)
        if len(rows) < n:
            raise ValueError(f"{source / name} has {len(rows)} rows, fewer than the {n} asked for")
        data.joinpath(name).write_text("".join(rows[:n]), encoding="utf-8")
    return {"models": {m: str(paths[m]) for m in models}, "data": str(data), "max_seq_len": max_seq_len,
            "lr": lr, "seed": seed, "lora_module": {"opt": "decoder.layers.", "llama": "layers."},
            "work": str(work)}


# --------------------------------------------------------------------------------------------
# The notebook's ways, and what each should equal
# --------------------------------------------------------------------------------------------

REFERENCE = "1 x 16"  # one rank, micro batch 16, ZeRO-0, token: the run every other is held against


def accumulation_ways() -> list[Way]:
    """Global batch 16 four ways (1 rank x 16, 1 x 4 x GAS 4, 2 x 8, 2 x 4 x GAS 2), each with mean and token."""
    shapes = {"1 x 16": (1, 16, 1), "1 x 4 x GAS 4": (1, 4, 4), "2 x 8": (2, 8, 1), "2 x 4 x GAS 2": (2, 4, 2)}
    return [Way(f"{name}{'' if reduction == 'token' else ' mean'}", ranks, micro, gas, reduction=reduction)
            for name, (ranks, micro, gas) in shapes.items() for reduction in ("token", "mean")]


def zero_ways() -> list[Way]:
    """ZeRO 1, 2 and 3 on one rank (micro 16) and two (micro 8), token (ZeRO-0's are in ``accumulation_ways``)."""
    return [Way(f"ZeRO-{z} {r} rank{'s' * (r > 1)}", r, 16 // r, zero=z, reduction="token")
            for r in (1, 2) for z in (1, 2, 3)]


def batching_ways(n_train: int, epochs: int) -> list[Way]:
    """Padded, dynamically padded and packed, each step one micro batch of the whole training set
    (packing regroups samples, so only a step that holds them all sees the same ones); OPT packs
    with a 4-D mask, Llama padding-free (OPT's attention ignores restarting position_ids)."""
    full = dict(micro=n_train, epochs=epochs, reduction="token")
    return [Way("OPT padded", batching="padded", **full), Way("OPT dynamic", **full),
            Way("OPT packing (mask)", batching="packing=mask", **full),
            Way("Llama dynamic", model="llama", **full),
            Way("Llama packing (padding-free)", model="llama", batching="packing=padding_free", **full)]


def lora_ways(lora_dim: int = 8) -> list[Way]:
    """LoRA under ZeRO-0 on one rank and under ZeRO-3 on two, token."""
    return [Way("LoRA ZeRO-0 1 rank", lora_dim=lora_dim, reduction="token"),
            Way("LoRA ZeRO-3 2 ranks", 2, 8, zero=3, lora_dim=lora_dim, reduction="token")]


# --------------------------------------------------------------------------------------------
# Running the ways (inside the ranks, then from the notebook)
# --------------------------------------------------------------------------------------------


def train_way(way: Way, setup: dict) -> dict:
    """``sftlib.train.main`` on this way's flags (its log kept aside); its per-step losses and folders."""
    from sftlib import train
    from sftlib.dist import all_ranks

    out = Path(setup["work"]) / way.name.replace(" ", "_").replace("/", "-")
    log = io.StringIO()
    start = time.time()
    with contextlib.redirect_stdout(log), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DeepSpeed's deprecation notices; the lesson reads results, not logs
        history = train.main(way.argv(setup, out))
    return {"name": way.name, "loss": history.loss, "step": history.step, "model": str(out / "model"),
            "loss_by_rank": all_ranks(history.loss), "seconds": time.time() - start, "log": log.getvalue()[-4000:]}


def run_plan(plan_file) -> None:
    """Every way of a plan, in this process (one rank of the job); rank 0 writes the results."""
    import torch.distributed as dist

    plan = json.loads(Path(plan_file).read_text())
    ways = sorted((Way(**w) for w in plan["ways"]), key=lambda w: w.zero == 3)  # ZeRO-3 last
    results = [train_way(w, plan["setup"]) for w in ways]
    if not dist.is_initialized() or dist.get_rank() == 0:
        Path(plan["out"]).write_text(json.dumps({r["name"]: r for r in results}, indent=1))


CPU = {"DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": ""}  # the runs' fp32 on CPU ranks, on a GPU host too


def run_ways(ways: list[Way], setup: dict, timeout: int = 900) -> dict:
    """Run every way (one job per world size, on the CPU) and return ``{name: result}``; a failure raises
    with the log's end."""
    from sftlib.lessons.zero_ranks import launch

    results = {}
    for ranks in sorted({w.ranks for w in ways}):
        plan = Path(setup["work"]) / f"plan_{ranks}_ranks.json"
        out = plan.with_suffix(".results.json")
        plan.write_text(json.dumps({"setup": setup, "out": str(out),
                                    "ways": [dataclasses.asdict(w) for w in ways if w.ranks == ranks]}))
        if ranks == 1:
            cmd = [sys.executable, "-m", "sftlib.lessons.equivalence", "--plan", str(plan)]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=launcher_free_env(CPU))
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        else:
            launch("sftlib.lessons.equivalence", ["--plan", plan], ranks=ranks, env=CPU, timeout=timeout)
        results.update(json.loads(out.read_text()))
    return results


# --------------------------------------------------------------------------------------------
# Comparing two runs
# --------------------------------------------------------------------------------------------

# Adding b to every key shifts each query's attention scores by one constant, which softmax ignores:
# the loss does not depend on these biases, their exact gradient is 0, and what a run gives them is
# rounding noise that Adam (dividing by its running RMS) turns into full-size steps.
SHIFT_INVARIANT = ("self_attn.k_proj.bias",)


def final_weights(result: dict) -> dict:
    """The saved model's tensors (LoRA already fused into the weights by the save)."""
    from safetensors.torch import load_file

    return load_file(os.path.join(result["model"], "model.safetensors"))


def compare(result: dict, reference: dict) -> dict:
    """Two runs side by side: ``loss_rel_diff``, the largest relative difference of their per-step losses;
    ``weight_diff``, the largest absolute difference of their final weights, attention key biases aside;
    ``key_bias_diff``, that of the key biases (``SHIFT_INVARIANT``: their exact gradient is zero)."""
    import numpy as np

    a, b = np.array(result["loss"]), np.array(reference["loss"])
    if a.shape != b.shape:
        raise ValueError(f"{result['name']} has {a.size} steps, {reference['name']} {b.size}")
    wa, wb = final_weights(result), final_weights(reference)
    diffs = {k: float((wa[k] - wb[k]).abs().max()) for k in wb}
    key_bias = [d for k, d in diffs.items() if k.endswith(SHIFT_INVARIANT)]
    return {"steps": int(a.size), "loss_rel_diff": float(np.max(np.abs(a - b) / np.abs(b))),
            "weight_diff": max(d for k, d in diffs.items() if not k.endswith(SHIFT_INVARIANT)),
            "key_bias_diff": max(key_bias, default=0.0)}


# --------------------------------------------------------------------------------------------
# The table: what each way should give, and what it gave
# --------------------------------------------------------------------------------------------

LOSS_TOL = 1e-5  # relative, per step: fp32 reduction order (measured here: at most 2e-6)
WEIGHT_TOL = 1e-4  # absolute, final weights, key biases aside (measured: at most 1.1e-5)
CLIP_TOL = 1e-3  # ZeRO 1-3 vs ZeRO-0: gradient clipping rounds differently (measured: 6.5e-4)

# (way, held against, should, why); "differ" rows must miss the reference by 10x LOSS_TOL in loss and
# by 100x their token twin's weight difference
CHECKS = [
    ("1 x 16 mean", REFERENCE, "equal", "one micro batch on one rank: its mean is the token mean"),
    ("1 x 4 x GAS 4", REFERENCE, "equal", "token: each micro sum x GAS x ranks / N, DeepSpeed divides by both"),
    ("1 x 4 x GAS 4 mean", REFERENCE, "differ", "mean of 4 micro means: a token of a short micro batch weighs more"),
    ("2 x 8", REFERENCE, "equal", "the samplers deal the same 16 samples to the ranks; token as above"),
    ("2 x 8 mean", REFERENCE, "differ", "(mean rank 0 + mean rank 1) / 2: each rank weighs the same, not each token"),
    ("2 x 4 x GAS 2", REFERENCE, "equal", "both splits at once"),
    ("2 x 4 x GAS 2 mean", REFERENCE, "differ", "both splits' weighting errors at once"),
    *[(f"ZeRO-{z} {r} rank{'s' * (r > 1)}", REFERENCE, "equal (clipping)",
       "ZeRO partitions what is stored, not what is computed; it clips in another order")
      for r in (1, 2) for z in (1, 2, 3)],
    ("OPT padded", "OPT dynamic", "equal", "padding is a masked key and a -100 label: no weight"),
    ("OPT packing (mask)", "OPT dynamic", "equal", "a block-diagonal mask keeps each sample to itself"),
    ("Llama packing (padding-free)", "Llama dynamic", "equal", "restarting position_ids do, in Llama's attention"),
    ("LoRA ZeRO-3 2 ranks", "LoRA ZeRO-0 1 rank", "equal", "LoRA changes what trains, not how it is reduced"),
]


def check_row(results: dict, way: str, reference: str, should: str, why: str) -> dict:
    """One row of the table: the comparison, its tolerance and whether it holds."""
    c = compare(results[way], results[reference])
    if should == "differ":
        twin = compare(results[way.removesuffix(" mean")], results[reference])["weight_diff"]
        holds = c["loss_rel_diff"] > 10 * LOSS_TOL and c["weight_diff"] > 100 * twin
        tolerance = f"> {10 * LOSS_TOL:.0e} and > 100 x {twin:.1e}"
    else:
        weight_tol = CLIP_TOL if "clipping" in should else WEIGHT_TOL
        holds = c["loss_rel_diff"] <= LOSS_TOL and c["weight_diff"] <= weight_tol
        tolerance = f"<= {LOSS_TOL:.0e} and <= {weight_tol:.0e}"
    return {"way": way, "vs": reference, "should": should, "why": why, "steps": c["steps"],
            "loss rel. diff": c["loss_rel_diff"], "weight diff": c["weight_diff"],
            "key-bias diff": c["key_bias_diff"], "tolerance (loss, weights)": tolerance, "holds": holds}


def table(results: dict):
    """Every ``CHECKS`` row whose runs are in ``results``, as a DataFrame indexed by way."""
    import pandas as pd

    rows = [check_row(results, *c) for c in CHECKS if c[0] in results and c[1] in results]
    return pd.DataFrame(rows).set_index("way")


# --------------------------------------------------------------------------------------------
# Looking inside: token counts, a gradient that should be zero, gradient clipping
# --------------------------------------------------------------------------------------------


def first_batches(way: Way, setup: dict, rank: int = 0) -> list[dict]:
    """The micro batches of ``way``'s first optimizer step on ``rank``, built by ``sftlib.train``'s own
    dataloader code with that rank's ``DistributedSampler`` (needs a process group: ``init_distributed``)."""
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from sftlib import train
    from sftlib.model import load_hf_tokenizer

    args = train.parse_args(way.argv(setup, Path(setup["work"]) / "inspect"))
    args.local_rank = 0
    with contextlib.redirect_stdout(io.StringIO()):
        loader, _ = train.build_dataloaders(args, load_hf_tokenizer(args.model_name_or_path))
    sampler = DistributedSampler(loader.dataset, num_replicas=way.ranks, rank=rank)  # torch's defaults, as train's
    mine = DataLoader(loader.dataset, batch_size=way.micro, sampler=sampler, collate_fn=loader.collate_fn)
    return [batch for _, batch in zip(range(way.gas), mine)]


def first_step_counts(way: Way, setup: dict) -> list[list[int]]:
    """Label tokens of each micro batch of the first optimizer step, one list per rank."""
    from sftlib.loss import label_token_count

    return [[int(label_token_count(b["labels"])) for b in first_batches(way, setup, r)] for r in range(way.ranks)]


def bias_gradients(setup: dict) -> dict:
    """Largest |gradient| of each kind of attention bias on the reference's first batch, in float64."""
    import torch
    from transformers import AutoModelForCausalLM

    from sftlib.loss import label_token_count, summed_token_loss

    batch = first_batches(Way(REFERENCE, reduction="token"), setup)[0]
    model = AutoModelForCausalLM.from_pretrained(setup["models"]["opt"], dtype=torch.float64)
    labels = batch.pop("labels")
    (summed_token_loss(model(**batch).logits, labels).double() / label_token_count(labels)).backward()
    kinds = ("q_proj.bias", "k_proj.bias", "v_proj.bias", "out_proj.bias")
    return {k: max(float(p.grad.abs().max()) for n, p in model.named_parameters() if n.endswith(k)) for k in kinds}


def zero0_vs_zero1(setup: dict, gradient_clipping: float, steps: int = 3) -> float:
    """Largest weight difference between ZeRO-0 and ZeRO-1 engines (one rank, this process) after
    ``steps`` identical steps on the reference's first batch, with the given ``gradient_clipping``."""
    import copy

    import deepspeed
    import torch
    from transformers import AutoModelForCausalLM

    from sftlib.ds_config import get_train_ds_config

    batch = first_batches(Way(REFERENCE), setup)[0]
    base = AutoModelForCausalLM.from_pretrained(setup["models"]["opt"])
    weights = []
    for stage in (0, 1):
        config = get_train_ds_config(offload=False, dtype="fp32", stage=stage)
        config.update(train_micro_batch_size_per_gpu=16, train_batch_size=16, gradient_clipping=gradient_clipping)
        model = copy.deepcopy(base)
        optimizer = torch.optim.AdamW(model.parameters(), lr=setup["lr"], betas=(0.9, 0.95))
        with contextlib.redirect_stdout(io.StringIO()):  # DeepSpeed's start-up log
            engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        for _ in range(steps):
            engine.backward(engine(**batch, use_cache=False).loss)
            engine.step()
        weights.append({n: p.detach().clone() for n, p in engine.module.named_parameters()})
    return max(float((weights[0][n] - weights[1][n]).abs().max()) for n in weights[0])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plan", required=True, help="json: {setup, out, ways}")
    p.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher; unused")
    run_plan(p.parse_args(argv).plan)


if __name__ == "__main__":
    run(main)
