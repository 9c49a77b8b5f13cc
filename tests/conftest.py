"""Shared fixtures: the toy world (built once, cached) and a clean offline environment."""

import os
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def world():
    from sftlib.toy import ensure_toy_world

    return ensure_toy_world(("opt", "llama"))


def run_cli(args, env_extra=None, timeout=600):
    """Run a command with the repo's python environment; returns the CompletedProcess."""
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, **(env_extra or {}))
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
