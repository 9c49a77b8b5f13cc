"""Checkpoints on node-local disks: each node's local rank 0 writes its node's marker and prunes its
node's folder, every rank resumes from its own copy. Two loopback "nodes" (two ``torchrun --nnodes 2``
processes, each in its own working folder, as tests/test_multinode.py launches them) stand for two
machines: a relative --checkpoint_dir is then one folder per node."""

import os

import pytest

from sftlib.errors import SFTError
from sftlib.save import storage_layout
from tests.helpers import two_loopback_nodes


def two_nodes(world, tmp_path, *extra):
    """Both nodes' logs, once both exited 0: 1 epoch, 4 micro batches per rank, one optimizer step each."""
    codes, logs = two_loopback_nodes(tmp_path, [
        "--model_name_or_path", str(world["opt"]), "--data_path", str(world["data"]), "--data_split", "10,0,0",
        "--max_seq_len", "48", "--per_device_train_batch_size", "48", "--per_device_eval_batch_size", "128",
        "--num_train_epochs", "1", "--dtype", "fp32", "--dropout", "0.1", "--data_output_path", "cache", *extra])
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    return logs


def weights(folder):
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


@pytest.mark.slow
def test_each_node_marks_and_prunes_its_own_folder_and_resumes_from_it(world, tmp_path):
    two_nodes(world, tmp_path, "--save_steps", "1", "--save_total_limit", "2", "--checkpoint_dir", "ckpt",
              "--output_dir", str(tmp_path / "ref"))
    for node in (0, 1):
        ckpt = tmp_path / f"node{node}" / "ckpt"
        tags = sorted(p.name for p in ckpt.iterdir() if p.name.startswith("global_step"))
        assert tags == ["global_step3", "global_step4"], (node, tags)  # pruned on this node too
        for tag in tags:
            names = set(os.listdir(ckpt / tag))
            assert {"sftlib_checkpoint.json", "mp_rank_00_model_states.pt", f"rng_state_rank{node}.pt"} <= names
        assert not [p for p in ckpt.iterdir() if p.name.startswith(".sftlib-probe")], "probes cleaned up"

    logs = two_nodes(world, tmp_path, "--resume_from_checkpoint", "ckpt/global_step3", "--checkpoint_dir", "ckpt2",
                     "--output_dir", str(tmp_path / "resumed"))
    assert "resumed from ckpt/global_step3: epoch 1, micro batch 3, global step 3" in logs[0]
    ref, got = weights(tmp_path / "ref"), weights(tmp_path / "resumed")
    assert ref.keys() == got.keys() and max((ref[k] - got[k]).abs().max().item() for k in ref) == 0.0


def test_the_layout_decision_shared_per_node_or_refused():
    """``storage_layout`` from every rank's (local rank, ranks whose probe it saw, problem)."""
    shared = [(0, [0, 1, 2, 3], None), (1, [0, 1, 2, 3], None), (0, [0, 1, 2, 3], None), (1, [0, 1, 2, 3], None)]
    assert storage_layout(shared, "ckpt") is False
    per_node = [(0, [0, 1], None), (1, [0, 1], None), (0, [2, 3], None), (1, [2, 3], None)]
    assert storage_layout(per_node, "ckpt") is True
    per_rank = [(0, [0], None), (1, [1], None)]  # one node, each rank its own folder: local rank 1 has no writer
    with pytest.raises(SFTError, match=r"rank 1 shares its copy with ranks \[1\], which is neither"):
        storage_layout(per_rank, "ckpt")
    three_nodes = [(0, [0, 1], None), (0, [0, 1], None), (0, [2], None)]  # nodes 0 and 1 share, node 2 alone
    with pytest.raises(SFTError, match="rank 0 shares its copy with ranks \\[0, 1\\]"):
        storage_layout(three_nodes, "ckpt")
    with pytest.raises(SFTError, match="checkpoint folder ckpt cannot be written \\(Permission denied on rank 1\\)"):
        storage_layout([(0, [0], None), (0, [], "Permission denied on rank 1")], "ckpt")
