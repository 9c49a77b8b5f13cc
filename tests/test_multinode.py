"""Two "nodes" on loopback: two ``torchrun --nnodes 2`` processes, each in its own working folder.

LOCAL_RANK is 0 on both, so each node's local rank 0 builds its dataset cache: into a node-local
relative ``--data_output_path`` (one build per node), or once into a folder both nodes share (the
other node's builder finds it complete). Global rank 0 alone writes the one saved model. Both "nodes"
are CPU nodes, on a GPU host too (``tests.helpers.cpu_env``): two ranks on one GPU is what NCCL refuses."""

import subprocess

import pytest

from tests.helpers import two_loopback_nodes


def launch(world, tmp_path, cache, *extra, data=None):
    return two_loopback_nodes(tmp_path, [
        "--model_name_or_path", str(world["opt"]), "--data_path", data or str(world["data"]), "--data_split", "10,0,0",
        "--max_seq_len", "48", "--per_device_train_batch_size", "48", "--per_device_eval_batch_size", "64",
        "--num_train_epochs", "1", "--dtype", "fp32", "--data_output_path", cache,
        "--output_dir", str(tmp_path / "model"), *extra])


def two_nodes(world, tmp_path, cache, *extra):
    codes, logs = launch(world, tmp_path, cache, *extra)
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    return logs


def assert_one_saved_model(tmp_path):
    from transformers import AutoModelForCausalLM

    saved = sorted(p.name for p in tmp_path.iterdir())
    assert saved == ["model", "node0", "node1"], saved
    assert not any((tmp_path / f"node{n}" / "model").exists() for n in (0, 1))
    AutoModelForCausalLM.from_pretrained(tmp_path / "model")


@pytest.mark.slow
def test_node_local_caches_zero3_and_logs_inside_the_output_dir(world, tmp_path):
    logs = two_nodes(world, tmp_path, "cache", "--zero_stage", "3", "--enable_tensorboard",
                     "--tensorboard_path", str(tmp_path / "model"))  # as DeepSpeed-Chat's scripts: logs in $OUTPUT
    assert [log.count("built dataset cache") for log in logs] == [1, 1], "each node built its own cache"
    for n in (0, 1):
        assert len(list((tmp_path / f"node{n}" / "cache").glob("prompt_dataset_*[!k]"))) == 1
    assert_one_saved_model(tmp_path)
    inside = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"model.safetensors", "config.json", "ds_tensorboard_logs", "sftlib"} <= inside, inside
    assert list((tmp_path / "model" / "sftlib").glob("events.out.tfevents.*")), "the run's logs are kept"


@pytest.mark.slow
def test_one_cache_folder_shared_by_both_nodes_is_built_once(world, tmp_path):
    shared = tmp_path / "shared_cache"
    logs = two_nodes(world, tmp_path, str(shared))
    assert sum(log.count("built dataset cache") for log in logs) == 1
    assert len([p for p in shared.glob("prompt_dataset_*") if p.is_dir()]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "node0", "node1", "shared_cache"]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "model")


@pytest.mark.slow
def test_a_bad_file_on_one_node_is_reported_once_by_that_rank(world, tmp_path):
    import shutil

    for node in (0, 1):  # node-local copies of the data; node 1's has a byte that is not UTF-8
        shutil.copytree(world["data"], tmp_path / f"node{node}" / "data")
    train = tmp_path / "node1" / "data" / "train.json"
    lines = train.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"prompt": "', b'"prompt": "\xff', 1)
    train.write_bytes(b"".join(lines))
    codes, logs = launch(world, tmp_path, "cache", data="data")
    assert codes[0] != 0 and codes[1] != 0, "neither node is left waiting"
    ours = [[line for line in log.splitlines() if line.startswith("error: ")] for log in logs]
    assert ours == [[], ["error: [rank 1] data/train.json:3: byte 0xff at column 13 is not UTF-8; "
                         "save the file as UTF-8"]]
    assert not (tmp_path / "model").exists() and not (tmp_path / "node0" / "cache").exists()


def test_both_nodes_are_launched_on_the_cpu(world, tmp_path, monkeypatch):
    """What ``launch`` starts, without starting it: one torchrun per node, both on the CPU (on a GPU
    host both would otherwise take cuda:0)."""
    launched = []

    class Recorder:
        returncode = 0

        def __init__(self, cmd, env=None, **kwargs):
            launched.append((cmd, env))

        def communicate(self, timeout=None):
            return "", None

    monkeypatch.setattr(subprocess, "Popen", Recorder)
    assert launch(world, tmp_path, "cache")[0] == [0, 0]
    assert [cmd[cmd.index("--node_rank") + 1] for cmd, _ in launched] == ["0", "1"]
    assert all(env["DS_ACCELERATOR"] == "cpu" and env["CUDA_VISIBLE_DEVICES"] == "" for _, env in launched)
    assert all(cmd[cmd.index("--dtype") + 1] == "fp32" for cmd, _ in launched)
