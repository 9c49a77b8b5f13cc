"""DeepSpeed-Chat's small utilities (``dschat/utils/utils.py``), with the same names and signatures.

Explained in notebooks/02_utility_functions.ipynb.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch
import torch.distributed as dist


class SFTError(Exception):
    """A problem with the user's input; command lines print it as one line and exit 2."""


def is_rank_0() -> bool:
    """True on global rank 0, or when no process group is running."""
    return not dist.is_initialized() or dist.get_rank() == 0


def print_rank_0(msg, rank=None) -> None:
    """Print on global rank 0 (or when not distributed); ``rank`` overrides the check."""
    if (rank is not None and rank <= 0) or (rank is None and is_rank_0()):
        print(msg, flush=True)


def to_device(batch: dict, device) -> dict:
    """Move every tensor of ``batch`` to ``device``; other values are left alone."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def set_random_seed(seed: int | None) -> None:
    """Seed Python, numpy, torch and the accelerator (and transformers) for a repeatable run."""
    if seed is None:
        return
    import transformers

    transformers.set_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    from deepspeed.accelerator import get_accelerator

    get_accelerator().manual_seed_all(seed)


def get_all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over all ranks (SUM all-reduce, then divide by the world size)."""
    if not dist.is_initialized():
        return tensor
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor / dist.get_world_size()


NO_DECAY = ["bias", "layer_norm.weight", "layernorm.weight", "norm.weight", "ln_f.weight"]


def get_optimizer_grouped_parameters(model, weight_decay: float, lora_lr: float = 5e-4,
                                     no_decay_name_list=NO_DECAY, lora_name_list=("lora_right_weight",
                                                                                "lora_left_weight")):
    """DeepSpeed-Chat's three parameter groups, matched by case-insensitive substring.

    1. decayed, non-LoRA parameters; 2. LoRA parameters (decayed, with ``lora_lr``);
    3. parameters whose name contains a ``no_decay`` entry (weight decay 0). Frozen parameters are
    left out, and empty groups are dropped.
    """
    def has(name, subs):
        return any(s.lower() in name.lower() for s in subs)

    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in trainable if not has(n, no_decay_name_list) and not has(n, lora_name_list)],
         "weight_decay": weight_decay},
        {"params": [p for n, p in trainable if not has(n, no_decay_name_list) and has(n, lora_name_list)],
         "weight_decay": weight_decay, "lr": lora_lr},
        {"params": [p for n, p in trainable if has(n, no_decay_name_list)], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


class MovingAverage:
    """Arithmetic mean of every value seen so far (DeepSpeed-Chat uses it for reward logs)."""

    def __init__(self):
        self.count, self.total, self.mean = 0, 0.0, 0.0

    def update(self, num: float) -> float:
        self.total += num
        self.count += 1
        self.mean = self.total / self.count
        return self.mean


class ExponentialMovingAverage:
    """``ema = alpha * ema + (1 - alpha) * x``, starting at the first value."""

    def __init__(self, alpha: float = 0.9):
        self.alpha, self.ema = alpha, None

    def update(self, num: float) -> float:
        self.ema = num if self.ema is None else self.alpha * self.ema + (1 - self.alpha) * num
        return self.ema

    def get(self) -> float:
        return self.ema if self.ema is not None else 0.0


def local_rank() -> int:
    """The launcher's LOCAL_RANK (0 when launched as a single process)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------

SAVE_MARKER = "sftlib_save.json"  # written into every folder sftlib saves


def check_output_dir(path) -> None:
    """Refuse to replace a non-empty folder that is not a previous save (an HF model folder)."""
    from pathlib import Path

    path = Path(path)
    if path.is_file():
        raise SFTError(f"output dir {path} is a file")
    if path.is_dir() and any(path.iterdir()) and not ((path / SAVE_MARKER).exists()
                                                       or (path / "config.json").exists()):
        raise SFTError(f"output dir {path} is not empty and is not a previous save; "
                       "choose an empty or new folder")


def check_writable(path) -> None:
    """Fail early, before any training, when ``path`` cannot be created or written."""
    from pathlib import Path
    import tempfile

    path = Path(path).absolute()
    check_output_dir(path)
    parent = path
    while not parent.exists():
        parent = parent.parent
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise SFTError(f"output dir {path} cannot be written ({err.strerror} at {parent})") from None


def write_hf_folder(model, state_dict: dict, tokenizer, out_dir) -> None:
    """Write ``state_dict`` as safetensors, the config and the whole tokenizer, atomically.

    Everything goes into a temporary sibling folder that is renamed into place at the end, so a
    crash leaves the previous save (or nothing), never a half-written folder.
    """
    import json
    import shutil
    from pathlib import Path

    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / SAVE_MARKER).write_text(json.dumps({"format": "hf", "tensors": len(state_dict)}))
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def save_hf_format(model, tokenizer, args, sub_folder: str = "") -> None:
    """Rank 0's save of a non-ZeRO-3 model: LoRA keys dropped, safetensors, config and tokenizer."""
    model_to_save = model.module if hasattr(model, "module") else model
    state_dict = {k: v for k, v in model_to_save.state_dict().items() if "lora" not in k}
    write_hf_folder(model_to_save, state_dict, tokenizer, os.path.join(args.output_dir, sub_folder))
