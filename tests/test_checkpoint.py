"""sftlib.save.save_checkpoint and sftlib.checkpoint.load: the RNG states a checkpoint carries, CUDA's included
when CUDA is present (mocked here)."""

import random
from pathlib import Path

import pytest
import torch

from sftlib import checkpoint, rng, save
from sftlib.dist import init_distributed
from sftlib.errors import SFTError


class _Engine:
    """What save_checkpoint/load call on a DeepSpeed engine: a folder per tag, nothing else."""

    global_steps = 3
    local_rank = 0

    def use_node_local_storage(self):
        return False

    def save_checkpoint(self, ckpt_dir, tag, client_state):
        (Path(ckpt_dir) / tag).mkdir(parents=True)

    def load_checkpoint(self, ckpt_dir, tag, **_):
        return str(Path(ckpt_dir) / tag), {}


@pytest.fixture(scope="module")
def group():
    """A one-rank process group, joined before CUDA is mocked (DeepSpeed would then pick NCCL)."""
    init_distributed()


@pytest.fixture
def fake_cuda(group, monkeypatch):
    """Two CUDA devices whose generator states are distinct byte tensors; records what is set back."""
    states = [torch.arange(8, dtype=torch.uint8), torch.arange(8, 16, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in states])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.extend)
    return states, restored


def test_cuda_rng_states_of_every_device_are_saved_and_restored(tmp_path, fake_cuda, monkeypatch):
    states, restored = fake_cuda
    random.seed(7)
    torch.manual_seed(7)
    tag = save.save_checkpoint(_Engine(), tmp_path, {"epoch": 0, "step_in_epoch": 3}, {}, {"world_size": 1}, None)
    expected_python, expected_torch = random.random(), torch.rand(1)
    random.seed(99)
    torch.manual_seed(99)
    state = checkpoint.load(_Engine(), tmp_path, tag)
    assert len(state["cuda"]) == 2 and all(torch.equal(a, b) for a, b in zip(state["cuda"], states))
    rng.restore_rng(state)
    assert all(torch.equal(a, b) for a, b in zip(restored, states))
    assert random.random() == expected_python and torch.equal(torch.rand(1), expected_torch)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(SFTError, match="RNG states of 2 CUDA devices"):
        rng.restore_rng(state)


def test_cpu_checkpoints_hold_no_cuda_state(tmp_path, group, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    tag = save.save_checkpoint(_Engine(), tmp_path, {"epoch": 0, "step_in_epoch": 1}, {}, {"world_size": 1}, None)
    state = checkpoint.load(_Engine(), tmp_path, tag)
    assert "cuda" not in state and set(state) == {"python", "numpy", "torch"}
    rng.restore_rng(state)  # no CUDA call on a CPU
