"""sftlib.cli: every command ends on bad input the same way: one `error: ...` line, exit 2, printed
once per job, with the rank when only some ranks hit it. Who prints is decided in cli alone, from the
process group (or, before it exists, from whether a launcher started the process)."""

import shutil
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from sftlib import cli
from sftlib.dist import free_port
from sftlib.errors import ReportedElsewhere, SFTError
from tests import helpers
from tests.helpers import ROOT, cpu_env


def failing(argv):
    raise SFTError(f"--thing {argv[0]}: no such file")


def raising(err):
    """A command's main that fails with ``err``."""
    def main(argv):
        raise err
    return main


def test_user_error_is_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit) as info:
        cli.run(failing, ["x.json"])
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: --thing x.json: no such file\n"


def test_success_and_bugs_pass_through(capsys):
    seen = []
    cli.run(seen.append, ["a"])
    assert seen == [["a"]]
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback: only user errors are one line
        cli.run(lambda argv: 1 / 0)


def test_the_error_carries_its_message_only_and_cli_decides_who_prints(capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    err = SFTError("disk full")
    assert vars(err) == {} and not hasattr(SFTError, "quiet"), "no printing state on the exception"
    for raised, printed in [(ReportedElsewhere("the builder says it"), ""),
                            (cli.known_everywhere(err), "error: disk full\n")]:
        with pytest.raises(SystemExit) as info:
            cli.run(raising(raised))
        assert info.value.code == 2 and capsys.readouterr().err == printed
    monkeypatch.setattr(cli, "global_rank", lambda: 1)  # the same error, seen by rank 1
    assert cli.message(cli.known_everywhere(err)) is None
    assert cli.message(err) == "error: [rank 1] disk full", "an error only this rank knows names the rank"


@pytest.mark.parametrize("seen, lines", [
    (["bad row", "bad row"], ["error: bad row", None]),  # every rank, one reason: once, plainly
    ([None, "bad row"], [None, "error: [rank 1] bad row"]),  # one rank: that rank, with its rank
    (["a", "b"], ["error: [rank 0] a", "error: [rank 1] b"]),  # two reasons: each by its rank
    ([cli.QUIET, "bad row"], [None, "error: bad row"]),  # the waiting rank defers to the one that reports
    (["x", "x", None], ["error: [rank 0] x", None, None]),
])
def test_who_prints_each_outcome(seen, lines):
    assert [cli._who_prints(seen, rank) for rank in range(len(seen))] == lines


def test_before_the_group_a_stale_world_size_is_not_a_launcher(monkeypatch):
    """A WORLD_SIZE left in the environment (no launcher's RANK) does not make this process a rank of a job:
    the error is raised at once, and a successful run exits normally."""
    if dist.is_initialized():
        pytest.skip("an in-process run left its one-rank group: the group decides, checked below")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(SFTError):
        cli.attempt(lambda: failing(["x"]))
    monkeypatch.setattr(cli.os, "_exit", lambda code: pytest.fail("left through os._exit"))
    cli.run(lambda argv: None)
    monkeypatch.setenv("RANK", "1")  # a launcher's rank: the error waits for the others (cli.agree)
    assert str(cli.attempt(lambda: failing(["x"]))) == "--thing x: no such file"


def test_with_a_one_rank_group_the_group_decides(monkeypatch):
    from sftlib.dist import init_distributed

    init_distributed()
    monkeypatch.setenv("RANK", "3")  # even a launcher's variable does not outvote the group
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(SFTError):
        cli.attempt(lambda: failing(["x"]))
    monkeypatch.setattr(cli.os, "_exit", lambda code: pytest.fail("left through os._exit"))
    cli.run(lambda argv: None)
    assert dist.is_initialized(), "a one-rank group is kept for the next in-process run"


RANKS = """
import os, sys
from sftlib import cli
from sftlib.dist import init_distributed
from sftlib.errors import SFTError

rank, fails = int(os.environ["RANK"]), sys.argv[1]

def step():
    if fails == "all" or fails == str(rank):
        raise SFTError(f"data file {'/shared' if fails == 'all' else f'/node{rank}'}/train.json:3: bad row")
    return "fine"

def main(argv):
    problem = cli.attempt(step)  # before the group exists, as train.main's validation
    init_distributed()  # the group train.main makes (train.setup_distributed)
    cli.agree(problem)
    print("after", cli.on_every_rank(step), flush=True)

cli.run(main)
"""


def two_ranks(fails, wrap=lambda cmd: cmd):
    port, procs = free_port(), []
    for rank in (0, 1):
        env = cpu_env({"RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                 "MASTER_PORT": str(port)})
        procs.append(subprocess.Popen(wrap([sys.executable, "-c", RANKS, fails]), cwd=ROOT, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return [(p.wait(timeout=120), *p.communicate()) for p in procs]


@pytest.mark.slow
@pytest.mark.parametrize("fails, printed", [
    ("all", {0: "error: data file /shared/train.json:3: bad row"}),  # every rank: once, by rank 0
    ("1", {1: "error: [rank 1] data file /node1/train.json:3: bad row"}),  # one rank: by that rank, with its rank
    ("0", {0: "error: [rank 0] data file /node0/train.json:3: bad row"}),
])
def test_an_error_reaches_the_user_once_with_its_rank(fails, printed):
    results = two_ranks(fails)
    assert [code for code, _, _ in results] == [2, 2], results  # nobody is left waiting for the others
    errors = {r: err.strip() for r, (_, _, err) in enumerate(results) if "error:" in err}
    assert errors == printed and all(len(e.splitlines()) == 1 for e in errors.values())
    assert not any("after" in out for _, out, _ in results)


NO_SUCH_HOST = "sftlib-test-host-that-resolves-nowhere"


def on_a_host_named_nowhere(cmd):
    """``cmd`` in its own UTS namespace whose hostname does not resolve (as in many containers)."""
    return ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', NO_SUCH_HOST, *cmd]


def can_rename_the_host() -> bool:
    """True where ``unshare --uts`` works here (root, or the capability to make namespaces)."""
    return shutil.which("unshare") is not None and subprocess.run(
        on_a_host_named_nowhere(["true"]), capture_output=True).returncode == 0


ONE_RANK = """
from sftlib import cli
from sftlib.dist import init_distributed
from sftlib.errors import SFTError

def bad_row():
    raise SFTError("data/train.json:3: bad row")

def main(argv):
    init_distributed()  # python -m sftlib.train's one-rank group
    cli.on_every_rank(bad_row)

cli.run(main)
"""
PLAIN_GLOO = ("import torch.distributed as d; d.init_process_group('gloo', store=d.HashStore(), rank=0, "
              "world_size=1); d.barrier()")


@pytest.mark.slow
@pytest.mark.skipif(not can_rename_the_host(), reason="needs unshare --uts to give a process a hostname")
def test_gloos_hostname_warning_does_not_land_in_front_of_the_error():
    """gloo's C++ warns "Unable to resolve hostname" when it makes a group on such a host: it must not
    come before (or after) the one `error:` line, for one rank or for two."""
    plain = subprocess.run(on_a_host_named_nowhere([sys.executable, "-c", PLAIN_GLOO]), capture_output=True,
                           text=True, env=cpu_env(), cwd=ROOT, timeout=120)
    assert plain.returncode == 0 and "Unable to resolve hostname" in plain.stderr, "the simulation is real"
    alone = subprocess.run(on_a_host_named_nowhere([sys.executable, "-c", ONE_RANK]), capture_output=True,
                           text=True, env=cpu_env(), cwd=ROOT, timeout=300)
    assert (alone.returncode, alone.stderr) == (2, "error: data/train.json:3: bad row\n")
    results = two_ranks("all", wrap=on_a_host_named_nowhere)
    assert [(code, err) for code, _, err in results] == [(2, "error: data file /shared/train.json:3: bad row\n"),
                                                          (2, "")], results


class FakePopen:
    """Records what a test would launch (command, environment) and pretends it succeeded."""

    launched: list = []

    def __init__(self, cmd, env=None, **kwargs):
        self.launched.append((cmd, env))
        self.returncode = 0

    def wait(self, timeout=None):
        return 0

    def communicate(self, timeout=None):
        return "", ""


GPU_HOST_PROBE = """
import torch
torch.cuda.is_available = lambda: True  # what a GPU host reports
torch.cuda.device_count = lambda: 1
from sftlib import dist
from deepspeed.accelerator import get_accelerator
print(dist.accelerator_name(), dist.device_for_rank(1), get_accelerator().device_name(),
      get_accelerator().communication_backend_name())
"""


def test_what_the_tests_launch_runs_on_the_cpu_on_a_gpu_host_too(monkeypatch):
    """A simulated GPU host (CUDA reported available): the environment every launched test job gets
    (tests.helpers.cpu_env, run_cli, the two ranks above) still puts sftlib and DeepSpeed on the CPU,
    so rank 1 asks for no cuda:1 and fp16 is refused with the CPU's message."""
    monkeypatch.setenv("RANK", "3")
    env = cpu_env({"EXTRA": "1"})
    assert (env["DS_ACCELERATOR"], env["CUDA_VISIBLE_DEVICES"], env["EXTRA"]) == ("cpu", "", "1")
    assert "RANK" not in env, "still outside this process's group"
    monkeypatch.delenv("RANK")
    probe = subprocess.run([sys.executable, "-c", GPU_HOST_PROBE], capture_output=True, text=True, env=env,
                           cwd=ROOT, timeout=300)
    assert probe.stdout.split() == ["cpu", "cpu", "cpu", "gloo"], probe.stdout + probe.stderr[-2000:]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the same host, in this process
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    from sftlib import dist

    assert dist.accelerator_name() == "cuda", "the simulation is a GPU host: without CPU_ONLY it picks CUDA"
    monkeypatch.setattr(helpers.subprocess, "run", lambda *a, **kw: kw)
    assert helpers.run_cli(["true"])["env"]["DS_ACCELERATOR"] == "cpu"
    assert "DS_ACCELERATOR" not in helpers.run_cli(["true"], cpu=False)["env"], "cpu=False: the host's accelerator"
    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    FakePopen.launched.clear()
    two_ranks("all")
    assert [(env["DS_ACCELERATOR"], env["CUDA_VISIBLE_DEVICES"]) for _, env in FakePopen.launched] == [("cpu", "")] * 2
