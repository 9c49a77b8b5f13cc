"""DeepSpeed-Chat's small utilities (``dschat/utils/utils.py``), with the same names and signatures.

What differs from the original, on purpose:

- ``get_all_reduce_mean`` leaves the caller's tensor alone (the original all-reduced it in place,
  so the caller's variable silently became the SUM over ranks).
- ``save_hf_format`` writes safetensors, the config and the whole tokenizer (the original wrote
  ``pytorch_model.bin`` and only the vocabulary files), into a temporary folder renamed into place,
  and refuses to overwrite a non-empty folder that is not a previous save.

Explained in notebooks/02_utility_functions.ipynb.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from sftlib.constants import is_lora_name
from sftlib.dist import is_rank_0, unwrap
from sftlib.errors import SFTError

# DeepSpeed-Chat's names that notebook 02 reads from here, as dschat/utils/utils.py defines them all:
from sftlib.optim import describe_optimizer_groups, get_optimizer_grouped_parameters  # noqa: F401

# --------------------------------------------------------------------------------------------
# Ranks, devices, seeds
# --------------------------------------------------------------------------------------------

def print_rank_0(msg, rank=None) -> None:
    """Print once per job: on global rank 0, or when not distributed.

    ``rank`` replaces the process-group check: DeepSpeed-Chat passes ``args.global_rank`` so that
    a message prints before the group exists (-1 and 0 print, anything else stays quiet; the
    original still printed a ``rank=1`` message when the process itself was rank 0).
    Explained in notebooks/02_utility_functions.ipynb.
    """
    if (rank is not None and rank <= 0) or (rank is None and is_rank_0()):
        print(msg, flush=True)


def to_device(batch: dict, device, non_blocking: bool = False) -> dict:
    """Move every tensor of ``batch`` to ``device``; other values (strings, lists) are left alone.

    ``non_blocking=True`` (sftlib's): the host does not wait for the copy, nor for the device's
    earlier work (a GPU copy from page-locked memory, ``DataLoader(pin_memory=True)``, is truly
    asynchronous). Explained in notebooks/02_utility_functions.ipynb.
    """
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in batch.items()}


def set_random_seed(seed: int | None) -> None:
    """Seed transformers, Python, numpy, torch and the accelerator, for a repeatable run.

    Every rank gets the same seed, so every rank builds the same initial weights (LoRA's random
    matrices included) before DeepSpeed starts. ``None`` leaves all generators as they are.
    Explained in notebooks/02_utility_functions.ipynb.
    """
    if seed is None:
        return
    import transformers
    from deepspeed.accelerator import get_accelerator

    transformers.set_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    get_accelerator().manual_seed_all(seed)


def get_all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over all ranks: a SUM all-reduce, then a division by the world size.

    Works on a copy, so the caller's tensor keeps its own rank's value. Every rank must call it
    (it is a collective). Without a process group it returns the tensor unchanged. Integer tensors
    come back as floats. Explained in notebooks/02_utility_functions.ipynb.
    """
    if not dist.is_initialized():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()


# --------------------------------------------------------------------------------------------
# Moving averages (DeepSpeed-Chat uses them for step-2/3 logs)
# --------------------------------------------------------------------------------------------

class MovingAverage:
    """Arithmetic mean of every value seen so far. Explained in notebooks/02_utility_functions.ipynb."""

    def __init__(self):
        self.count, self.total, self.mean = 0, 0.0, 0.0

    def update(self, num: float) -> float:
        self.total += num
        self.count += 1
        self.mean = self.total / self.count
        return self.mean


class ExponentialMovingAverage:
    """``ema = alpha * ema + (1 - alpha) * x``, starting at the first value.

    Explained in notebooks/02_utility_functions.ipynb.
    """

    def __init__(self, alpha: float = 0.9):
        self.alpha, self.ema = alpha, None

    def update(self, num: float) -> float:
        self.ema = num if self.ema is None else self.alpha * self.ema + (1 - self.alpha) * num
        return self.ema

    def get(self) -> float:
        return self.ema if self.ema is not None else 0.0


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------

SAVE_MARKER = "sftlib_save.json"  # written into every folder sftlib saves
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def is_previous_save(path) -> bool:
    """True for a folder sftlib saved before, or any HF model folder (config.json plus weights).

    Explained in notebooks/02_utility_functions.ipynb.
    """
    path = Path(path)
    return (path / SAVE_MARKER).is_file() or (
        (path / "config.json").is_file() and any((path / w).is_file() for w in WEIGHT_FILES))


def check_output_dir(path, allow=()) -> None:
    """Refuse to replace a non-empty folder that is not a previous save (an HF model folder).

    ``allow``: names inside the folder that the caller's own run writes (its TensorBoard logs, its
    checkpoints); they are tolerated and never touched. Explained in notebooks/02_utility_functions.ipynb.
    """
    path = Path(path)
    if path.is_file():
        raise SFTError(f"output dir {path} is a file; pass a folder")
    if path.is_dir() and not is_previous_save(path):
        other = sorted(p.name for p in path.iterdir() if p.name not in set(allow) and not p.name.startswith(".sftlib-"))
        if other:
            raise SFTError(f"output dir {path} is not empty and is not a previous save (it holds {other[0]}); "
                           "choose an empty or new folder")


def check_writable(path, allow=()) -> None:
    """Fail early, before any training, when ``path`` cannot be created or written."""
    import tempfile

    path = Path(path).absolute()
    check_output_dir(path, allow)
    parent = path
    while not parent.exists():
        parent = parent.parent
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise SFTError(f"output dir {path} cannot be written ({err.strerror} at {parent})") from None


SAVE_FILES = re.compile(r"^(config\.json|generation_config\.json|model.*\.safetensors(\.index\.json)?|"
                        r"pytorch_model.*\.bin(\.index\.json)?|tokenizer.*|special_tokens_map\.json|vocab\..*|"
                        r"merges\.txt|added_tokens\.json|chat_template\.jinja|training_history\.json|"
                        + re.escape(SAVE_MARKER) + r")$")


def _only_a_save(path: Path) -> bool:
    """True when every entry of ``path`` is a file a model save writes (the whole folder may be swapped)."""
    return all(p.is_file() and SAVE_FILES.match(p.name) for p in path.iterdir())


def write_hf_folder(model, state_dict: dict, tokenizer, out_dir, allow=()) -> None:
    """Write ``state_dict`` as safetensors, the config and the whole tokenizer, atomically.

    Everything goes into a hidden temporary folder first. A new folder, or one holding only a
    previous save, is then swapped in whole: a crash leaves the previous save (or nothing), never a
    half-written folder, and a failed swap puts the previous save back. A folder that also holds
    ``allow`` entries (this run's logs or checkpoints) is never moved: the files are renamed into it
    one by one, the previous save's own files it no longer writes are removed, and nothing else is
    touched. Explained in notebooks/02_utility_functions.ipynb.
    """
    out_dir = Path(out_dir)
    check_output_dir(out_dir, allow)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    in_place = out_dir.is_dir() and not _only_a_save(out_dir)
    tmp = out_dir / f".sftlib-save-{os.getpid()}" if in_place else out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        files = sorted(p.name for p in tmp.iterdir())
        (tmp / SAVE_MARKER).write_text(json.dumps({"format": "hf", "tensors": len(state_dict),
                                                   "tokenizer": tokenizer is not None, "files": files}))
        if in_place:
            _move_files_in(tmp, out_dir, files)
            return
        had_old = out_dir.exists()
        if had_old:
            os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if had_old:
                os.replace(old, out_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_files_in(tmp: Path, out_dir: Path, files: list[str]) -> None:
    """Rename each new file into ``out_dir``, drop the previous save's files not written again, marker last."""
    try:
        previous = json.loads((out_dir / SAVE_MARKER).read_text()).get("files", [])
    except (OSError, json.JSONDecodeError):
        previous = []
    (out_dir / SAVE_MARKER).unlink(missing_ok=True)
    for name in files:
        os.replace(tmp / name, out_dir / name)
    for name in set(previous) - set(files):
        if SAVE_FILES.match(name) and (out_dir / name).is_file():
            (out_dir / name).unlink()
    os.replace(tmp / SAVE_MARKER, out_dir / SAVE_MARKER)


def rescue_dir(out_dir) -> Path:
    """Where a failed final save puts the weights instead: ``<name>.rescued-<time>`` in the nearest
    existing folder above ``out_dir`` (the system's temporary folder if that one cannot be written)."""
    import tempfile
    import time

    out_dir = Path(out_dir).absolute()
    parent = out_dir.parent
    while not parent.is_dir():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        parent = Path(tempfile.gettempdir())
    return parent / f"{out_dir.name}.rescued-{time.strftime('%Y%m%d-%H%M%S')}"


def save_hf_format(model, tokenizer, args, sub_folder: str = "", allow=()) -> None:
    """Rank 0's save of a non-ZeRO-3 model into ``args.output_dir/sub_folder``, loadable by HF.

    Unwraps the DeepSpeed engine, drops LoRA keys (fuse them first with
    ``convert_lora_to_linear_layer``: an unfused LoRA layer is an error, not silently lost
    training), then writes safetensors, ``config.json``, the generation config and the whole
    tokenizer atomically. Explained in notebooks/02_utility_functions.ipynb.
    """
    if getattr(args, "output_dir", None) is None:
        raise SFTError("save_hf_format needs args.output_dir (pass --output_dir)")
    model_to_save = unwrap(model)
    unfused = [n for n, m in model_to_save.named_modules() if getattr(m, "fuse_lora", True) is False]
    if unfused:
        raise SFTError(f"LoRA layers are not fused (e.g. {unfused[0]}); call "
                       "sftlib.lora.convert_lora_to_linear_layer(model) before saving")
    state_dict = {k: v for k, v in model_to_save.state_dict().items() if not is_lora_name(k)}
    write_hf_folder(model_to_save, state_dict, tokenizer, os.path.join(args.output_dir, sub_folder), allow)
