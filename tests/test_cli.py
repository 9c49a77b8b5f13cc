"""sftlib.cli: every command ends on bad input the same way: one `error: ...` line, exit 2."""

import pytest

from sftlib import cli
from sftlib.utils import SFTError


def failing(argv):
    raise SFTError(f"--thing {argv[0]}: no such file")


def test_user_error_is_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit) as info:
        cli.run(failing, ["x.json"])
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: --thing x.json: no such file\n"


def test_only_rank_0_prints(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit):
        cli.run(failing, ["x"])
    assert capsys.readouterr().err == ""


def test_success_and_bugs_pass_through(capsys):
    seen = []
    cli.run(seen.append, ["a"])
    assert seen == [["a"]]
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback: only user errors are one line
        cli.run(lambda argv: 1 / 0)
