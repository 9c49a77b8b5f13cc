"""Intermediate checkpoints and exact resume: what DeepSpeed-Chat step 1 does not have.

A checkpoint is a DeepSpeed checkpoint (``engine.save_checkpoint``: weights, optimizer and
scheduler, per ZeRO partition) plus what a bit-exact resume also needs: the position in the epoch,
each rank's random number generator states and the history so far. ``sftlib_checkpoint.json`` is
written last, after every rank finished, so a folder without it is an interrupted save and is never
resumed from.

Explained in notebooks/05_main_training_loop.ipynb.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from sftlib.errors import SFTError
from sftlib.rng import restore_rng, rng_state  # noqa: F401 (restore_rng: train's resume calls it from here)

MARKER = "sftlib_checkpoint.json"
TAG = re.compile(r"^global_step(\d+)$")


def default_dir(args) -> str | None:
    """``--checkpoint_dir``, or ``<output_dir>_checkpoints`` beside the final model folder."""
    if getattr(args, "checkpoint_dir", None):
        return args.checkpoint_dir
    return f"{str(args.output_dir).rstrip('/')}_checkpoints" if args.output_dir else None


def meta_of(args, world_size: int) -> dict:
    """What must match between the run that saved and the run that resumes."""
    return {"world_size": world_size, "zero_stage": args.zero_stage,
            "model_name_or_path": str(args.model_name_or_path),
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps, "lora_dim": args.lora_dim}


def completed_tags(ckpt_dir) -> list[str]:
    """Tags of complete checkpoints, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    tags = [p.name for p in ckpt_dir.iterdir() if TAG.match(p.name) and (p / MARKER).exists()]
    return sorted(tags, key=lambda t: int(TAG.match(t).group(1)))


def save(engine, ckpt_dir, position: dict, history: dict, meta: dict, save_total_limit: int | None) -> str:
    """Every rank calls this at an optimizer-step boundary; returns the tag written."""
    tag = f"global_step{engine.global_steps}"
    rank = dist.get_rank()
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"sftlib_position": position})
    torch.save(rng_state(), Path(ckpt_dir) / tag / f"rng_state_rank{rank}.pt")
    dist.barrier()
    if rank == 0:
        (Path(ckpt_dir) / tag / MARKER).write_text(json.dumps({**meta, **position, "history": history}))
        if save_total_limit:
            for old in completed_tags(ckpt_dir)[:-save_total_limit]:
                shutil.rmtree(Path(ckpt_dir) / old, ignore_errors=True)
    dist.barrier()
    return tag


def resolve(path, meta: dict) -> tuple[Path, str, dict]:
    """Check ``--resume_from_checkpoint`` and return (checkpoint dir, tag, saved state).

    ``path`` is a checkpoint folder (its newest complete tag is used) or one tag inside it. Every
    failure names what to fix: a missing path, a folder that is not an sftlib checkpoint, or one
    written by a run with another world size or ZeRO stage.
    """
    path = Path(path)
    if not path.exists():
        raise SFTError(f"--resume_from_checkpoint {path}: no such folder")
    if TAG.match(path.name) and (path / MARKER).exists():
        ckpt_dir, tag = path.parent, path.name
    else:
        tags = completed_tags(path)
        if not tags:
            raise SFTError(f"--resume_from_checkpoint {path}: not an sftlib checkpoint folder "
                           f"(no global_stepN/{MARKER} inside; pass the folder --save_steps wrote)")
        ckpt_dir, tag = path, tags[-1]
    saved = json.loads((ckpt_dir / tag / MARKER).read_text())
    for key in ("world_size", "zero_stage"):
        if saved[key] != meta[key]:
            raise SFTError(
                f"--resume_from_checkpoint {ckpt_dir / tag}: saved with {key}={saved[key]}, this run has "
                f"{key}={meta[key]}; DeepSpeed reloads ZeRO partitions only at the same world size and stage "
                "(convert it with deepspeed.checkpoint.ds_to_universal and load_universal to change them)")
    for key in ("model_name_or_path", "per_device_train_batch_size", "gradient_accumulation_steps", "lora_dim"):
        if saved[key] != meta[key]:
            raise SFTError(f"--resume_from_checkpoint {ckpt_dir / tag}: saved with --{key} {saved[key]}, "
                           f"this run has {meta[key]}; resume with the same arguments")
    return ckpt_dir, tag, saved


def load(engine, ckpt_dir: Path, tag: str) -> dict:
    """Load weights, optimizer and scheduler into ``engine``; return this rank's RNG states."""
    load_path, _ = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if load_path is None:
        raise SFTError(f"DeepSpeed could not load {ckpt_dir / tag}; is it complete?")
    rng_file = ckpt_dir / tag / f"rng_state_rank{dist.get_rank()}.pt"
    return torch.load(rng_file, weights_only=False)

