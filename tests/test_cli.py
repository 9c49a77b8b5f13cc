"""sftlib.cli: every command ends on bad input the same way: one `error: ...` line, exit 2, printed
once per job, with the rank when only some ranks hit it."""

import subprocess
import sys

import pytest
import torch

from sftlib import cli
from sftlib.dist import free_port
from sftlib.errors import SFTError
from tests import helpers
from tests.helpers import ROOT, cpu_env


def failing(argv):
    raise SFTError(f"--thing {argv[0]}: no such file")


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


RANKS = """
import os, sys
import torch.distributed as dist
from sftlib import cli
from sftlib.errors import SFTError

rank, fails = int(os.environ["RANK"]), sys.argv[1]

def step():
    if fails == "all" or fails == str(rank):
        raise SFTError(f"data file {'/shared' if fails == 'all' else f'/node{rank}'}/train.json:3: bad row")
    return "fine"

def main(argv):
    problem = cli.attempt(step)  # before the group exists, as train.main's validation
    dist.init_process_group("gloo")
    cli.agree(problem)
    print("after", cli.on_every_rank(step), flush=True)

cli.run(main)
"""


def two_ranks(fails):
    port, procs = free_port(), []
    for rank in (0, 1):
        env = cpu_env({"RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                 "MASTER_PORT": str(port)})
        procs.append(subprocess.Popen([sys.executable, "-c", RANKS, fails], cwd=ROOT, env=env, text=True,
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
