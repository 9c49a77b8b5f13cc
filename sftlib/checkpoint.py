"""Intermediate checkpoints and exact resume: what DeepSpeed-Chat step 1 does not have.

A checkpoint is a DeepSpeed checkpoint (``engine.save_checkpoint``: weights, optimizer and
scheduler, per ZeRO partition) plus what a bit-exact resume also needs: the position in the epoch,
each rank's random number generator states and the history so far. ``sftlib_checkpoint.json`` is
written last, after every rank finished (``sftlib.save.save_checkpoint``), so a folder without it is
an interrupted save and is never resumed from. This module finds, checks and loads them: a damaged
marker or file is one line naming it, said before DeepSpeed reads anything.

Explained in notebooks/05_main_training_loop.ipynb.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import torch
import torch.distributed as dist

from sftlib.dist import all_ranks
from sftlib.errors import SFTError

MARKER = "sftlib_checkpoint.json"
TAG = re.compile(r"^global_step(\d+)$")
SAME_LAYOUT = ("world_size", "zero_stage")  # what DeepSpeed needs unchanged to reload ZeRO partitions
SAME_ARGS = ("model_name_or_path", "per_device_train_batch_size", "gradient_accumulation_steps", "lora_dim")
POSITION = {"epoch": int, "step_in_epoch": int, "history": dict}


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


def resolve(path, meta: dict) -> tuple[Path, str, dict]:
    """Check ``--resume_from_checkpoint`` and return (checkpoint dir, tag, saved state).

    ``path`` is a checkpoint folder (its newest complete tag is used) or one tag inside it. Every
    failure names what to fix: a missing path, a folder that is not an sftlib checkpoint, a damaged
    marker, or one written by a run with another world size, ZeRO stage or batch arguments.
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
    saved = read_marker(ckpt_dir, tag)
    for key in SAME_LAYOUT:
        if saved[key] != meta[key]:
            raise SFTError(
                f"--resume_from_checkpoint {ckpt_dir / tag}: saved with {key}={saved[key]}, this run has "
                f"{key}={meta[key]}; DeepSpeed reloads ZeRO partitions only at the same world size and stage "
                "(convert it with deepspeed.checkpoint.ds_to_universal and load_universal to change them)")
    for key in SAME_ARGS:
        if saved[key] != meta[key]:
            raise SFTError(f"--resume_from_checkpoint {ckpt_dir / tag}: saved with --{key} {saved[key]}, "
                           f"this run has {meta[key]}; resume with the same arguments")
    return ckpt_dir, tag, saved


def damaged(file: Path, why: str) -> SFTError:
    """The one line for a damaged checkpoint file: which file, what is wrong, what to resume from instead."""
    ckpt_dir, tag = file.parent.parent, file.parent.name
    earlier = [t for t in completed_tags(ckpt_dir) if t != tag and TAG.match(tag)
               and int(TAG.match(t).group(1)) < int(TAG.match(tag).group(1))]
    instead = f"resume from {ckpt_dir / earlier[-1]}" if earlier else "no earlier checkpoint is complete"
    return SFTError(f"{file}: damaged checkpoint file ({why}); {instead}")


def read_marker(ckpt_dir: Path, tag: str) -> dict:
    """A checkpoint's marker, checked: JSON holding every key a resume reads, with the right types."""
    marker = ckpt_dir / tag / MARKER
    try:
        saved = json.loads(marker.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f" at line {err.lineno} column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        raise damaged(marker, f"not JSON{where}") from None
    if not isinstance(saved, dict):
        raise damaged(marker, "not a JSON object")
    for key in (*SAME_LAYOUT, *SAME_ARGS, *POSITION):
        if key not in saved:
            raise damaged(marker, f"no {key!r}")
    for key, kind in POSITION.items():
        if not isinstance(saved[key], kind) or (kind is int and saved[key] < 0):
            raise damaged(marker, f"{key!r} is {saved[key]!r}")
    return saved


def check_files(folder: Path, rank: int) -> None:
    """The files this rank will read from a checkpoint are whole torch archives: a truncated or
    overwritten file is named here, before DeepSpeed reads anything. Opening the zip index and its
    pickle is cheap; the tensors' bytes are DeepSpeed's to read."""
    own = f"rng_state_rank{rank}.pt"
    if not (folder / own).is_file():
        raise SFTError(f"{folder}: no {own}; the checkpoint is incomplete or was saved by other ranks")
    for file in sorted(folder.glob("*.pt")):
        if not _read_by(file.name, rank):
            continue
        try:
            with zipfile.ZipFile(file) as archive:
                archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
        except (zipfile.BadZipFile, StopIteration, OSError, EOFError) as err:
            raise damaged(file, f"not a whole torch file: {_first_line(err) or 'no data.pkl'}") from None


def _read_by(name: str, rank: int) -> bool:
    """Does ``rank`` read this file of a tag folder? Its RNG states, its ZeRO shards, the model states."""
    return (name == f"rng_state_rank{rank}.pt" or f"zero_pp_rank_{rank}_" in name
            or re.match(r"^mp_rank_\d+_model_states\.pt$", name) is not None)


def _first_line(err: Exception) -> str:
    return (str(err).splitlines() or [""])[0]


def same_on_every_rank(ckpt_dir: Path, tag: str) -> None:
    """Every rank must resume from the same tag (node-local folders can hold different newest ones)."""
    tags = all_ranks(tag)
    if len(set(tags)) > 1:
        seen = ", ".join(f"rank {r}: {t}" for r, t in enumerate(tags))
        oldest = min(tags, key=lambda t: int(TAG.match(t).group(1)))
        raise SFTError(f"--resume_from_checkpoint {ckpt_dir}: the ranks' newest complete checkpoints differ "
                       f"({seen}); pass one tag every node holds, e.g. {ckpt_dir / oldest}")


def load(engine, ckpt_dir: Path, tag: str) -> dict:
    """Load weights, optimizer and scheduler into ``engine``; return this rank's RNG states."""
    folder, rank = ckpt_dir / tag, dist.get_rank()
    check_files(folder, rank)
    try:
        load_path, _ = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        rng = torch.load(folder / f"rng_state_rank{rank}.pt", weights_only=False)
    except (RuntimeError, OSError, EOFError, KeyError, ValueError) as err:  # a file damaged inside its tensors
        raise SFTError(f"DeepSpeed could not load {folder} ({type(err).__name__}: {_first_line(err)}); "
                       "resume from an earlier checkpoint") from None
    if load_path is None:
        raise SFTError(f"DeepSpeed could not load {folder}; is it complete?")
    return rng
