"""Ranks, devices and launchers: the one home of sftlib's distributed helpers.

A *rank* is one training process; the launcher (``deepspeed``, ``torchrun``) starts one per GPU (or
per CPU slot) and tells each its global ``RANK``, its ``LOCAL_RANK`` on the node and the
``WORLD_SIZE``. Everything here works before, after and without a process group.

Explained in notebooks/02_utility_functions.ipynb.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist

LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def global_rank() -> int:
    """This process's rank in the job: the process group's, else the launcher's ``RANK``, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """The launcher's LOCAL_RANK (0 when launched as a single process)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    """Ranks in the job (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_rank_0() -> bool:
    """True on global rank 0, or when no process group is running."""
    return not dist.is_initialized() or dist.get_rank() == 0


def accelerator_name() -> str:
    """The accelerator DeepSpeed would pick ("cuda", "cpu", "mps", ...).

    Found without importing DeepSpeed (and its CPU warning) on common machines; anything unusual
    is asked of DeepSpeed itself.
    """
    if os.environ.get("DS_ACCELERATOR"):
        return os.environ["DS_ACCELERATOR"]
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    if not any(importlib.util.find_spec(m) for m in ("intel_extension_for_pytorch", "torch_npu",
                                                      "habana_frameworks", "torch_mlu", "torch_sdaa")):
        return "cpu"
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name()


def device_for_rank(rank: int | None = None) -> torch.device:
    """This rank's device: ``cpu`` on a CPU, else the accelerator's device ``LOCAL_RANK`` (made current)."""
    name = accelerator_name()
    if name == "cpu":
        return torch.device("cpu")
    from deepspeed.accelerator import get_accelerator

    rank = local_rank() if rank is None else rank
    get_accelerator().set_device(rank)
    return torch.device(name, rank)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_free_env(extra: dict | None = None) -> dict:
    """``os.environ`` without the launcher's rank variables, one thread per rank, plus ``extra``.

    For starting a child job from a process that is itself a rank (a notebook that ran
    ``train.main`` in-process has set RANK, MASTER_PORT, ...): the child must not join that group.
    """
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra or {})
    return env


def init_distributed(timeout: timedelta | None = None) -> None:
    """Join the launcher's process group, or make a one-rank group for ``python -m``/notebooks.

    ``timeout`` is how long a rank may wait in one collective before the group's watchdog ends the job
    (``--dist_timeout``); None keeps DeepSpeed's default (10 minutes, or ``DEEPSPEED_TIMEOUT``).
    """
    import deepspeed
    from deepspeed.constants import default_pg_timeout

    timeout = timeout or default_pg_timeout

    if dist.is_initialized():
        return
    if "RANK" not in os.environ:
        # One rank: a file rendezvous cannot collide with another process's port, as TCP can.
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
        store = os.path.join(tempfile.gettempdir(), f"sftlib-rendezvous-{os.getpid()}-{time.time_ns()}")
        from deepspeed.accelerator import get_accelerator

        backend = get_accelerator().communication_backend_name()
        dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1, timeout=timeout)
    probe_ops_quietly()
    deepspeed.init_distributed(timeout=timeout)  # keeps a group that exists (deepspeed/comm/torch.py)


def probe_ops_quietly() -> None:
    """Run DeepSpeed's one-off op probe with file descriptor 2 sent to a scratch file.

    On a CPU, ``deepspeed.init_distributed`` asks which ops can be built (``deepspeed.ops.__compatible_ops__``):
    for ``async_io`` it compiles and links a test program against libaio. DeepSpeed silences the compiler by
    redirecting ``sys.stderr.fileno()`` (``op_builder/builder.py``, ``has_function``), but in a Jupyter kernel
    that is a copy of descriptor 2, not 2 itself (``ipykernel/iostream.py``, ``OutStream.fileno``), so the
    linker's ``cannot find -laio`` reached the page. The probe's result is unchanged; only its noise goes.
    """
    import deepspeed.ops

    if "__compatible_ops__" in vars(deepspeed.ops):  # probed once per process
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                _ = deepspeed.ops.__compatible_ops__  # the first access runs the probe
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def unwrap(model):
    """The ``nn.Module`` inside a DeepSpeed engine (or the model itself)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, torch.nn.Module) else model


def full_shape(param) -> tuple:
    """A parameter's whole shape, also under ZeRO-3 (where the local tensor is an empty partition
    and DeepSpeed keeps the real shape in ``ds_shape``)."""
    return tuple(getattr(param, "ds_shape", param.shape))


def all_ranks(item) -> list:
    """``item`` from every rank, in rank order (just ``[item]`` without a process group)."""
    if not dist.is_initialized():
        return [item]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, item)
    return out
