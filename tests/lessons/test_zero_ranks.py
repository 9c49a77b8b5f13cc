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
