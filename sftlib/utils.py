"""DeepSpeed-Chat's small utilities (``dschat/utils/utils.py``), by their names and signatures.

The three rank helpers are defined here; the original file's other names live where they belong
(``sftlib.rng``, ``sftlib.optim``, ``sftlib.history``, ``sftlib.save``, ``sftlib.zero``) and are
re-exported below, so that notebook 02 walks the original file name by name. What differs from the
original, on purpose:

- ``get_all_reduce_mean`` leaves the caller's tensor alone (the original all-reduced it in place,
  so the caller's variable silently became the SUM over ranks).
- ``to_device(..., non_blocking=True)`` lets the host run on while a batch is copied.
- ``save_hf_format`` writes safetensors, the config and the whole tokenizer (the original wrote
  ``pytorch_model.bin`` and only the vocabulary files), into a temporary folder renamed into place,
  and refuses to overwrite a non-empty folder that is not a previous save.

Explained in notebooks/02_utility_functions.ipynb.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from sftlib.dist import is_rank_0

# dschat/utils/utils.py's other names, from where they live (notebook 02 reads them from here):
from sftlib.history import ExponentialMovingAverage, MovingAverage  # noqa: F401
from sftlib.optim import describe_optimizer_groups, get_optimizer_grouped_parameters  # noqa: F401
from sftlib.rng import set_random_seed  # noqa: F401

# save_hf_format is DeepSpeed-Chat's; the other three are not, and are importable from here only until
# notebook 03 (write_hf_folder), sftlib/arguments.py (check_writable) and tests/test_layout.py
# (check_output_dir) import them from sftlib.save.
from sftlib.save import check_output_dir, check_writable, save_hf_format, write_hf_folder  # noqa: F401
from sftlib.zero import save_zero_three_model  # noqa: F401


def print_rank_0(msg, rank=None) -> None:
    """Print once per job: on global rank 0, or when not distributed.

    ``rank`` replaces the process-group check: DeepSpeed-Chat passes ``args.global_rank`` so that
    a message prints before the group exists (-1 and 0 print, anything else stays quiet; the
    original still printed a ``rank=1`` message when the process itself was rank 0).
    """
    if (rank is not None and rank <= 0) or (rank is None and is_rank_0()):
        print(msg, flush=True)


def to_device(batch: dict, device, non_blocking: bool = False) -> dict:
    """Move every tensor of ``batch`` to ``device``; other values (strings, lists) are left alone.

    ``non_blocking=True`` (sftlib's): the host does not wait for the copy, nor for the device's
    earlier work (a GPU copy from page-locked memory, ``DataLoader(pin_memory=True)``, is truly
    asynchronous).
    """
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in batch.items()}


def get_all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over all ranks: a SUM all-reduce, then a division by the world size.

    Works on a copy, so the caller's tensor keeps its own rank's value. Every rank must call it
    (it is a collective). Without a process group it returns the tensor unchanged. Integer tensors
    come back as floats.
    """
    if not dist.is_initialized():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()
