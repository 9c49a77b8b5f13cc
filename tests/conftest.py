"""Fixtures: the toy world (built once, cached) and an offline environment."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def world():
    from sftlib.lessons.toy import ensure_toy_world

    return ensure_toy_world(("opt", "llama"), chat=True)
