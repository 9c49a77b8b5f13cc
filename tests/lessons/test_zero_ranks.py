"""sftlib.lessons.zero_ranks: element counts of one rank and the command line's two modes.

On launched ranks it runs in notebook 04 (every stage) and in tests/test_zero.py (a training run).
"""

import pytest
import torch

from sftlib import cli
from sftlib.lessons import zero_ranks


def test_one_rank_without_zero_holds_every_element_once():
    model = torch.nn.Sequential(torch.nn.Embedding(7, 3), torch.nn.Linear(3, 7))
    model[1].weight = model[0].weight  # tied: one tensor under two names
    assert zero_ranks.param_elements(model) == {"real": 21 + 7, "padded": 21 + 7}
    report = zero_ranks.partition_report(model, zero_stage=0)
    assert report == {"rank": 0, "zero_stage": 0, "params": {"real": 28, "padded": 28}}, "no optimizer: no counts"


def test_stage_report_without_a_model_is_a_user_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run(zero_ranks.main, ["--report-partitions", "out.json"])
    assert exit_info.value.code == 2 and "needs --model_name_or_path" in capsys.readouterr().err


def test_train_report_measures_just_before_the_real_save(world, tmp_path):
    """In this process, one rank, ZeRO-0: the lesson's saver reports every parameter, then the run's
    own saver writes the model; without --output_dir nothing is measured, and it says so."""
    import json

    from transformers import AutoModelForCausalLM

    from sftlib.errors import SFTError
    from tests.helpers import toy_train_args

    argv = toy_train_args(world, tmp_path / "run", per_device_train_batch_size=128, max_seq_len=32)
    history = zero_ranks.train_with_partition_report(argv, tmp_path / "report.json")
    report = json.loads((tmp_path / "report.json").read_text())
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    assert report["zero_stage"] == 0 and history["world_size"] == 1
    assert [r["params"]["real"] for r in report["ranks"]] == [saved.num_parameters()]
    with pytest.raises(SFTError, match="pass --output_dir"):
        zero_ranks.train_with_partition_report(toy_train_args(world, tmp_path / "x", output_dir=None,
                                                              per_device_train_batch_size=128, max_seq_len=32),
                                               tmp_path / "none.json")
    assert not (tmp_path / "none.json").exists()
