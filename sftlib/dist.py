"""Ranks, devices and launchers: the one home of sftlib's distributed helpers.

A *rank* is one training process; the launcher (``deepspeed``, ``torchrun``) starts one per GPU (or
per CPU slot) and tells each its global ``RANK``, its ``LOCAL_RANK`` on the node and the
``WORLD_SIZE``. Everything here works before, after and without a process group.

Explained in notebooks/02_utility_functions.ipynb.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import socket
import sys
import tempfile
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def global_rank() -> int:
    """This process's rank in the job: the process group's, else the launcher's ``RANK``, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ["RANK"]) if launched() else 0


def local_rank() -> int:
    """This process's rank on its node: the launcher's ``LOCAL_RANK``, 0 when no launcher started it."""
    return int(os.environ.get("LOCAL_RANK", "0")) if launched() else 0


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

    For starting a child job from a process that a launcher started (it has RANK, MASTER_PORT, ...):
    the child must not join that job's group. A notebook that ran ``train.main`` in-process is no
    launched rank (``init_distributed`` sets none of these); the one thread per rank still matters.
    """
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class RankContext:
    """Who this process is in the job, as ``init_distributed`` found it: pass it on as a value.

    ``rank`` is the global rank, ``local_rank`` the rank on this node (which device it uses and which
    process builds the node's dataset cache), ``world_size`` the number of ranks, ``device`` this
    rank's device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_rank_0(self) -> bool:
        """True on the one rank that prints and writes the saved model."""
        return self.rank == 0


def launched() -> bool:
    """True when a launcher (``deepspeed``, ``torchrun``) started this process as one rank of a job.

    The one place sftlib decides it from the launcher's variables (it sets ``RANK`` for every rank it
    starts); once a process group exists, ask the group instead (``world_size()``)."""
    return "RANK" in os.environ


def init_distributed(timeout: timedelta | None = None) -> RankContext:
    """Join the launcher's process group, or make a one-rank group for ``python -m``/notebooks.

    ``timeout`` is how long a rank may wait in one collective before the group's watchdog ends the job
    (``--dist_timeout``); None keeps DeepSpeed's default (10 minutes, or ``DEEPSPEED_TIMEOUT``). The
    one-rank group needs no launcher variables (an in-process store, no port): afterwards the process
    does not look like a launched rank, so the jobs it starts need no cleaned environment.
    """
    import deepspeed
    from deepspeed.accelerator import get_accelerator
    from deepspeed.constants import default_pg_timeout

    timeout = timeout or default_pg_timeout
    backend = get_accelerator().communication_backend_name()
    if not dist.is_initialized():
        if backend == "gloo":
            settle_gloo_hostname_warning()
        if not launched():
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
            local_rank_for_deepspeed()
        probe_ops_quietly()
        deepspeed.init_distributed(timeout=timeout)  # joins env:// under a launcher, keeps a group that exists
    rank = local_rank()
    return RankContext(dist.get_rank(), rank, dist.get_world_size(), device_for_rank(rank))


def local_rank_for_deepspeed() -> None:
    """The one write to ``os.environ`` in sftlib: ``LOCAL_RANK=0`` for a one-rank group no launcher made.

    DeepSpeed reads the local rank from the environment only, never from the process group: its engine
    asserts ``"LOCAL_RANK" in os.environ`` and reads it into ``engine.local_rank`` (deepspeed 0.19.8,
    ``runtime/engine.py`` lines 1972 and 1966), and ZeRO-3 picks its device from it
    (``runtime/zero/partition_parameters.py`` line 1138). A launcher sets it for every rank it starts.
    ``launched()`` looks at ``RANK``, which sftlib never sets, so the process still reads as not launched.
    """
    os.environ["LOCAL_RANK"] = "0"


def settle_gloo_hostname_warning() -> None:
    """Let gloo say its hostname warning once, into a scratch file, before any group is made.

    Each gloo group picks a network device from the machine's hostname; where the hostname does not
    resolve (common in containers) gloo's C++ prints "Unable to resolve hostname ... Using the loopback
    address as fallback" to descriptor 2, once per process (``TORCH_WARN_ONCE`` in
    ``ProcessGroupGloo::createDefaultDevice``), in front of whatever sftlib prints next. Asking for
    that default device here spends the warning. It is passed on when the ranks do not all share this
    machine: there the loopback fallback is the likely reason they cannot connect.
    """
    from torch.distributed import ProcessGroupGloo

    try:
        said = stderr_of(ProcessGroupGloo.create_default_device)
    except Exception:  # no usable device at all: the group's own creation reports it
        return
    if said and not on_one_machine():
        sys.stderr.write(said)
        sys.stderr.flush()


def on_one_machine() -> bool:
    """True when every rank runs on this machine: no launcher, or its ``MASTER_ADDR`` is a loopback address."""
    if not launched():
        return True
    try:
        return ipaddress.ip_address(socket.gethostbyname(os.environ.get("MASTER_ADDR", ""))).is_loopback
    except (OSError, ValueError):
        return False


def stderr_of(step) -> str:
    """Run ``step()`` with file descriptor 2 sent to a scratch file; returns what was written there.

    Catches what C and C++ code writes (compilers, gloo), which ``contextlib.redirect_stderr`` cannot.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                step()
            finally:
                os.dup2(saved, 2)
            sink.seek(0)
            return sink.read().decode(errors="replace")
    finally:
        os.close(saved)


def probe_ops_quietly() -> None:
    """Run DeepSpeed's one-off op probe with file descriptor 2 sent to a scratch file.

    On a CPU, ``deepspeed.init_distributed`` asks which ops can be built (``deepspeed.ops.__compatible_ops__``):
    for ``async_io`` it compiles and links a test program against libaio. DeepSpeed silences the compiler by
    redirecting ``sys.stderr.fileno()`` (``op_builder/builder.py``, ``has_function``), but in a Jupyter kernel
    that is a copy of descriptor 2, not 2 itself (``ipykernel/iostream.py``, ``OutStream.fileno``), so the
    linker's ``cannot find -laio`` reached the page. The probe's result is unchanged; only its noise goes.
    """
    import deepspeed.ops

    if "__compatible_ops__" not in vars(deepspeed.ops):  # probed once per process
        stderr_of(lambda: deepspeed.ops.__compatible_ops__)  # the first access runs the probe


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
