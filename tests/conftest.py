"""Shared fixtures: the toy world (built once, cached) and a clean offline environment."""

import os
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEEPSPEED = os.path.join(os.path.dirname(sys.executable), "deepspeed")  # the launcher of this environment
sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def world():
    from sftlib.toy import ensure_toy_world

    return ensure_toy_world(("opt", "llama"))


def run_cli(args, env_extra=None, timeout=600):
    """Run a command with the repo's python environment; returns the CompletedProcess."""
    import subprocess

    # an in-process sftlib.train.main() sets RANK/MASTER_PORT/...: a child must not join that group
    dist_vars = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in dist_vars}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=ROOT, **(env_extra or {}))
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
