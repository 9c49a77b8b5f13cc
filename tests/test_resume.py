"""Checkpoints and resume: a 2-rank run killed with SIGKILL resumes to bit-identical weights."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from sftlib.errors import SFTError
from tests.helpers import DEEPSPEED, ROOT, cpu_env


def two_rank_cmd(world, out, port, *extra):
    return [DEEPSPEED, "--num_gpus", "2", "--master_port", str(port), "--module", "sftlib.train",
            "--model_name_or_path", str(world["opt"]), "--data_path", str(world["data"]),
            "--data_split", "10,0,0", "--max_seq_len", "48", "--per_device_train_batch_size", "8",
            "--num_train_epochs", "2", "--dtype", "fp32", "--reshuffle_each_epoch",
            "--output_dir", str(out), *extra]


def run(cmd, **kw):
    return subprocess.Popen(cmd, cwd=ROOT, env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, **kw)


def weights(folder):
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(world, tmp_path):
    reference = run(two_rank_cmd(world, tmp_path / "ref", 29571))
    ckpts = tmp_path / "killed_checkpoints"
    killed = run(two_rank_cmd(world, tmp_path / "killed", 29572, "--save_steps", "5", "--save_total_limit", "2"))
    deadline = time.time() + 300
    while not (ckpts / "global_step5" / "sftlib_checkpoint.json").exists():
        assert killed.poll() is None and time.time() < deadline, killed.stdout.read()[-3000:]
        time.sleep(0.1)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed").exists(), "the run was killed before its final save"
    out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out[-3000:]

    resumed = run(two_rank_cmd(world, tmp_path / "killed", 29573, "--save_steps", "5", "--save_total_limit", "2",
                               "--resume_from_checkpoint", str(ckpts)))
    log, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, log[-3000:]
    assert "resumed from" in log
    ref, got = weights(tmp_path / "ref"), weights(tmp_path / "killed")
    assert ref.keys() == got.keys()
    assert max((ref[k] - got[k]).abs().max().item() for k in ref) == 0.0
    assert len([p for p in os.listdir(ckpts) if p.startswith("global_step")]) <= 2, "save_total_limit"

    # A 2-rank checkpoint cannot be resumed by one rank: the error says why and what DeepSpeed supports.
    from sftlib.train import main

    with pytest.raises(SFTError, match="world_size=2.*world_size=1.*universal"):
        main(two_rank_cmd(world, tmp_path / "one", 0, "--resume_from_checkpoint", str(ckpts))[7:])


@pytest.mark.slow
def test_gas_2_odd_batches_checkpoints_at_deepspeeds_boundaries_and_resumes_across_epochs(world, tmp_path):
    """3 micro batches per epoch, GAS 2: the second optimizer step takes the last batch of epoch 1 and
    the first of epoch 2. Checkpoints sit at DeepSpeed's boundaries, and a run resumed from the
    first one (mid-way through that cross-epoch step) ends with bit-identical weights."""
    from sftlib.train import main

    def args(out, ckpt, *extra):
        return ["--model_name_or_path", str(world["opt"]), "--data_path", str(world["data"]), "--data_split",
                "10,0,0", "--max_seq_len", "48", "--per_device_train_batch_size", "128",  # 384 rows: 3 batches
                "--per_device_eval_batch_size", "128", "--gradient_accumulation_steps", "2", "--num_train_epochs", "2",
                "--dtype", "fp32", "--dropout", "0.1", "--reshuffle_each_epoch", "--save_steps", "1",
                "--checkpoint_dir", str(ckpt), "--output_dir", str(out), *extra]

    history = main(args(tmp_path / "ref", tmp_path / "ckpt"))
    assert len(history["loss"]) == 3, "6 micro batches, GAS 2: three optimizer steps, three log lines"
    positions = [json.loads((tmp_path / "ckpt" / f"global_step{n}" / "sftlib_checkpoint.json").read_text())
                 for n in (1, 2, 3)]
    assert [(p["epoch"], p["step_in_epoch"]) for p in positions] == [(0, 2), (1, 1), (1, 3)]
    main(args(tmp_path / "resumed", tmp_path / "ckpt2", "--resume_from_checkpoint",
              str(tmp_path / "ckpt" / "global_step1")))
    ref, got = weights(tmp_path / "ref"), weights(tmp_path / "resumed")
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


def test_resume_from_missing_or_foreign_folder(world, tmp_path):
    from sftlib.train import main

    base = ["--model_name_or_path", str(world["opt"]), "--data_path", str(world["data"]), "--data_split", "10,0,0",
            "--max_seq_len", "32", "--dtype", "fp32"]
    with pytest.raises(SFTError, match="no such folder"):
        main(base + ["--resume_from_checkpoint", str(tmp_path / "nope")])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(SFTError, match="not an sftlib checkpoint folder"):
        main(base + ["--resume_from_checkpoint", str(foreign)])


def one_rank_args(world, out, *extra):
    return ["--model_name_or_path", str(world["opt"]), "--data_path", str(world["data"]), "--data_split", "10,0,0",
            "--max_seq_len", "48", "--per_device_train_batch_size", "128", "--num_train_epochs", "1",
            "--dtype", "fp32", "--output_dir", str(out), *extra]


@pytest.fixture(scope="module")
def saved_checkpoints(world, tmp_path_factory):
    """A real one-rank run's checkpoints: 3 optimizer steps, the last two kept (global_step2, global_step3)."""
    from sftlib.train import main

    root = tmp_path_factory.mktemp("saved")
    main(one_rank_args(world, root / "out", "--save_steps", "1", "--save_total_limit", "2",
                       "--data_output_path", str(root / "cache")))
    return root / "out_checkpoints"


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def scramble(path):
    path.write_bytes(bytes(range(256)) * (path.stat().st_size // 256 + 1))


def edit_marker(change):
    def damage(path):
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return damage


@pytest.mark.parametrize("file, damage, why", [
    ("mp_rank_00_model_states.pt", truncate, "not a whole torch file: File is not a zip file"),
    ("rng_state_rank0.pt", scramble, "not a whole torch file: File is not a zip file"),
    ("sftlib_checkpoint.json", lambda p: p.write_text('{"world_size": 2, '), "not JSON at line 1 column 19"),
    ("sftlib_checkpoint.json", edit_marker(lambda m: {k: v for k, v in m.items() if k != "zero_stage"}),
     "no 'zero_stage'"),
    ("sftlib_checkpoint.json", edit_marker(lambda m: {**m, "epoch": "one"}), "'epoch' is 'one'"),
], ids=["truncated-model-states", "scrambled-rng-states", "cut-marker", "marker-without-a-key", "marker-bad-epoch"])
def test_a_damaged_checkpoint_is_one_line_naming_the_file_and_writes_nothing(world, tmp_path, capsys,
                                                                            saved_checkpoints, file, damage, why):
    import hashlib
    import shutil

    from sftlib import cli, train

    ckpts = tmp_path / "ckpts"
    shutil.copytree(saved_checkpoints, ckpts)
    damage(ckpts / "global_step3" / file)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in ckpts.rglob("*") if p.is_file()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.run(train.main, one_rank_args(world, tmp_path / "out", "--resume_from_checkpoint", str(ckpts),
                                          "--data_output_path", str(tmp_path / "cache")))
    err = capsys.readouterr().err  # transformers' "Loading weights" bar is on stderr too
    assert exit_info.value.code == 2 and "Traceback" not in err
    expected = f"error: {ckpts / 'global_step3' / file}: damaged checkpoint file ({why}); resume from "
    assert [line for line in err.splitlines() if line.startswith("error")] == [expected + str(ckpts / "global_step2")]
    assert not (tmp_path / "out").exists()
    assert before == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in ckpts.rglob("*") if p.is_file()}


@pytest.mark.parametrize("flag, value", [("--per_device_train_batch_size", "0"),
                                         ("--gradient_accumulation_steps", "-1"),
                                         ("--deepspeed_config", "ds_config.json")])
def test_batch_sizes_must_be_positive(world, flag, value):
    from sftlib.train import main

    with pytest.raises(SFTError, match=flag):
        main(["--model_name_or_path", str(world["opt"]), "--data_path", str(world["data"]), "--dtype", "fp32",
              flag, value])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
