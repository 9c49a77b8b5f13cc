"""What several test modules share: the repository root, the launcher, a clean subprocess, a toy run's argv.

The suite is a CPU suite, on a GPU host too: every job a test launches gets ``CPU_ONLY`` in its
environment. ``DS_ACCELERATOR=cpu`` is what decides (``sftlib.dist.accelerator_name`` and DeepSpeed's
``get_accelerator`` both read it first), so fp16 is refused with the CPU's message, ranks use gloo and
a second rank never asks for ``cuda:1`` on a one-GPU host. ``CUDA_VISIBLE_DEVICES=""`` also hides the
GPUs from torch where the launcher leaves it alone (torchrun, plain python; DeepSpeed's launcher sets
it again for its ranks, which ``DS_ACCELERATOR`` keeps on the CPU anyway).
"""

import os
import subprocess
import sys

from sftlib.dist import launcher_free_env
from sftlib.lessons.train_args import train_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEEPSPEED = os.path.join(os.path.dirname(sys.executable), "deepspeed")  # the launcher of this environment
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
CPU_ONLY = {"DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": ""}


def cpu_env(extra: dict | None = None) -> dict:
    """``launcher_free_env`` (no rank variables of this process, one thread) on the CPU, plus ``extra``."""
    return launcher_free_env({**CPU_ONLY, **(extra or {})})


def toy_train_args(world, out, **overrides) -> list[str]:
    """A short ``sftlib.train`` run of the toy OPT on the toy data, in the run folder ``out`` (model in
    ``out/model``): ``train_args`` with 48-token samples, each keyword a flag (see its docstring)."""
    return train_args(world["opt"], world["data"], out, **{"max_seq_len": 48, **overrides})


def run_cli(args, env_extra=None, timeout=600, cpu=True):
    """Run a command with this environment's python, outside any process group this test joined
    (an in-process ``sftlib.train.main`` sets RANK, MASTER_PORT, ...), on the CPU unless ``cpu=False``;
    returns the CompletedProcess."""
    env = cpu_env(env_extra) if cpu else launcher_free_env(env_extra)
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


def two_loopback_nodes(tmp_path, train_argv: list[str], timeout=600) -> tuple[list[int], list[str]]:
    """Two ``torchrun --nnodes 2`` "nodes" on loopback, each in its own working folder ``tmp_path/nodeN``
    (so relative paths are node-local), running ``python -m sftlib.train`` with ``train_argv``; returns
    both exit codes and both logs. CPU nodes on a GPU host too (two ranks on one GPU is what NCCL refuses)."""
    from sftlib.dist import free_port

    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    port, procs = free_port(), []
    for node in (0, 1):
        cwd = tmp_path / f"node{node}"
        cwd.mkdir(exist_ok=True)
        cmd = [torchrun, "--nnodes", "2", "--node_rank", str(node), "--nproc-per-node", "1",
               "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "sftlib.train", *train_argv]
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=cpu_env({"PYTHONPATH": ROOT}), text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
    return [p.returncode for p in procs], logs
