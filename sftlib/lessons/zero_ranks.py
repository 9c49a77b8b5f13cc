"""What each rank holds under ZeRO 0-3, read from real DeepSpeed engines on launched ranks.

Two reports, both run under the launcher (every rank takes part, rank 0 writes the json)::

    # one engine per stage, one step each; under ZeRO-3 also the three ways to whole weights
    OMP_NUM_THREADS=1 deepspeed --num_gpus 2 --module sftlib.lessons.zero_ranks \\
        --report-partitions out.json --model_name_or_path toy_world/opt-tiny --stages 0 1 2 3

    # a real sftlib.train run; what each rank held is recorded just before its final save
    OMP_NUM_THREADS=1 deepspeed --num_gpus 2 --module sftlib.lessons.zero_ranks \\
        --train-report out.json --zero_stage 3 --model_name_or_path ... (any sftlib.train argument)

``launch`` starts either (or any module) from Python. Explained in notebooks/04_zero3_saving.ipynb.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from sftlib.cli import run
from sftlib.dist import all_ranks, free_port, global_rank, launcher_free_env, unwrap
from sftlib.errors import SFTError


def launch(module: str, args: list, ranks: int = 2, env: dict | None = None, timeout: int = 600) -> str:
    """Run ``deepspeed --num_gpus RANKS --module MODULE ARGS`` (one thread per rank) and return its output.

    On a CPU the launcher starts RANKS processes on the gloo backend; a free port is picked, and the
    caller's own rank variables are left out. A failure raises with the end of the log.
    """
    launcher = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    cmd = [launcher, "--num_gpus", str(ranks), "--master_port", str(free_port()), "--module", module,
           *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=launcher_free_env(env))
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:8])} ... failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


# --------------------------------------------------------------------------------------------
# Element counts of one rank
# --------------------------------------------------------------------------------------------


def param_elements(model, rank: int = 0) -> dict:
    """Parameter elements this rank stores: ``real`` (its share of the model) and ``padded``.

    Under ZeRO-3 a parameter of n elements is cut into world-size pieces of ceil(n / world); the
    last pieces are padded with zeros, so ``real`` over ranks sums to the model size exactly.
    """
    real = padded = 0
    for p in unwrap(model).parameters():  # each tied parameter once
        if hasattr(p, "ds_tensor"):
            piece = p.ds_tensor.ds_numel
            padded += piece
            real += max(0, min(piece, p.ds_numel - rank * piece))
        else:
            real += p.numel()
            padded += p.numel()
    return {"real": real, "padded": padded}


def _numel(tensors) -> int:
    return int(sum(t.numel() for t in tensors if torch.is_tensor(t)))


def grad_elements(engine) -> int:
    """Gradient elements this rank holds after ``backward`` (before ``step``)."""
    opt = engine.optimizer
    if getattr(opt, "grad_partitions_flat_buffer", None) is not None:  # ZeRO-3
        return _numel([opt.grad_partitions_flat_buffer])
    averaged = getattr(opt, "averaged_gradients", None)  # ZeRO-1/2: this rank's reduced partition
    if averaged:
        return _numel(t for group in averaged.values() for t in (group if isinstance(group, list) else [group]))
    return _numel(p.grad for p in unwrap(engine).parameters() if p.grad is not None)  # ZeRO-0/1


def optimizer_elements(engine) -> dict:
    """fp32 master-weight and Adam-moment elements this rank holds after ``step``."""
    opt = engine.optimizer
    master = getattr(opt, "fp32_partitioned_groups_flat", None) or getattr(opt, "single_partition_of_fp32_groups", [])
    base = getattr(opt, "optimizer", opt)
    moments = _numel(v for state in base.state.values() for k, v in state.items() if k != "step")
    return {"master": _numel(master), "moments": moments}


def partition_report(engine, zero_stage: int) -> dict:
    """This rank's parameter elements (and, when the engine has an optimizer, its optimizer elements)."""
    rank = global_rank()
    out = {"rank": rank, "zero_stage": zero_stage, "params": param_elements(engine, rank)}
    if getattr(engine, "optimizer", None) is not None:
        out.update(optimizer_elements(engine))
    return out


# --------------------------------------------------------------------------------------------
# One engine per stage
# --------------------------------------------------------------------------------------------


def _fixed_batch(tokenizer, n: int = 4, seq_len: int = 16) -> dict:
    texts = [f"\n\nHuman: Repeat the word w{i}.\n\nAssistant: w{i}." for i in range(n)]
    tok = tokenizer(texts, max_length=seq_len, padding="max_length", truncation=True, return_tensors="pt")
    return {**tok, "labels": tok["input_ids"].clone()}


def stage_report(args, stage: int, world: int) -> dict:
    """Build an engine at ``stage``, take one step, and measure what this rank holds.

    Under ZeRO-3 with ``args.save_dir`` it also saves three ways (``whole_weights.save_three_ways``).
    """
    import deepspeed
    from transformers import AutoModelForCausalLM

    from sftlib import model as model_utils
    from sftlib.ds_config import get_train_ds_config
    from sftlib.lessons.whole_weights import save_three_ways
    from sftlib.utils import set_random_seed

    set_random_seed(args.seed)
    ds_config = get_train_ds_config(offload=False, dtype="fp32", stage=stage)
    ds_config.update(train_micro_batch_size_per_gpu=2, train_batch_size=2 * world)
    tokenizer = model_utils.load_hf_tokenizer(args.model_name_or_path)
    model = model_utils.create_hf_model(AutoModelForCausalLM, args.model_name_or_path, tokenizer, ds_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    rank = engine.global_rank
    batch = {k: v[2 * rank:2 * rank + 2] for k, v in _fixed_batch(tokenizer, 2 * world).items()}
    engine.backward(engine(**batch).loss)
    grads = grad_elements(engine)
    engine.step()
    out = {**partition_report(engine, stage), "grads": grads,
           "model_params": sum(getattr(p, "ds_numel", p.numel()) for p in unwrap(engine).parameters())}
    if stage == 3 and args.save_dir:
        out.update(save_three_ways(engine, tokenizer, args.save_dir, rank))
    return out


def report_partitions(args) -> dict:
    """Every stage of ``args.stages`` in turn (ZeRO-3 last: it leaves ``zero.Init`` active)."""
    import deepspeed
    import torch.distributed as dist

    if not args.model_name_or_path:
        raise SFTError("--report-partitions needs --model_name_or_path")
    deepspeed.init_distributed()
    world = dist.get_world_size()
    reports = {stage: all_ranks(stage_report(args, stage, world)) for stage in sorted(args.stages)}
    if dist.get_rank() == 0:
        Path(args.report_partitions).write_text(json.dumps({"world_size": world, "stages": reports}, indent=1))
    return reports


# --------------------------------------------------------------------------------------------
# A real training run
# --------------------------------------------------------------------------------------------


def train_with_partition_report(train_argv: list, report_path) -> dict:
    """``sftlib.train.main(train_argv)``; just before its final save, what each rank holds goes to
    ``report_path`` (rank 0 writes ``{"zero_stage", "ranks"}``). Returns the training history.

    The lesson hands ``main`` a saver of its own: it takes the partition report first (all ranks,
    while the engine still holds its shards), then calls the run's real saver (``train.final_saver``:
    ``save_zero_three_model`` under ZeRO-3).
    """
    from sftlib import train

    args = train.parse_args([str(a) for a in train_argv])
    real_save = train.final_saver(args)
    saves = []

    def report_then_save(model, global_rank, save_dir, tokenizer=None, allow=()):
        ranks = all_ranks(partition_report(model, args.zero_stage))
        if global_rank == 0:
            Path(report_path).write_text(json.dumps({"zero_stage": args.zero_stage, "ranks": ranks}, indent=1))
        saves.append(save_dir)
        real_save(model, global_rank, save_dir, tokenizer=tokenizer, allow=allow)

    history = train.main(args, saver=report_then_save)
    if not saves:
        raise SFTError("the run saved no model, so nothing was measured: pass --output_dir")
    return history


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="What each rank holds under ZeRO 0-3 (run under the launcher)")
    todo = p.add_mutually_exclusive_group(required=True)
    todo.add_argument("--report-partitions", metavar="JSON", help="one engine per stage; rank 0 writes JSON")
    todo.add_argument("--train-report", metavar="JSON",
                      help="run sftlib.train with every other argument; rank 0 writes what each rank "
                           "held just before the final save")
    p.add_argument("--model_name_or_path")
    p.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--save_dir", default=None, help="under ZeRO-3, also save three ways here and compare")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--local_rank", type=int, default=-1, help="set by the launcher")
    return p


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    first = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    first.add_argument("--train-report")
    known, train_argv = first.parse_known_args(argv)
    if known.train_report:  # everything else belongs to sftlib.train
        train_with_partition_report(train_argv, known.train_report)
    else:
        report_partitions(_parser().parse_args(argv))


if __name__ == "__main__":
    run(main)
