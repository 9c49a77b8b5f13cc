"""sftlib.dist: the helpers every module shares about ranks, devices and launchers."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from sftlib import dist


def test_free_port_is_bindable_and_launcher_env_drops_rank_variables(monkeypatch):
    port = dist.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # nothing else holds it
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("SFTLIB_SOMETHING", "kept")
    env = dist.launcher_free_env({"EXTRA": "1"})
    assert "RANK" not in env and "MASTER_PORT" not in env
    assert env["SFTLIB_SOMETHING"] == "kept" and env["EXTRA"] == "1" and env["OMP_NUM_THREADS"] == "1"
    assert os.environ["RANK"] == "3", "the caller's environment is left alone"


def test_ranks_without_a_process_group(monkeypatch):
    if torch.distributed.is_initialized():  # an in-process training run left its one-rank group
        assert dist.global_rank() == 0 and dist.world_size() == 1
        return
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert (dist.global_rank(), dist.local_rank(), dist.world_size(), dist.is_rank_0()) == (5, 1, 1, True)
    assert dist.all_ranks({"x": 1}) == [{"x": 1}]


def test_accelerator_and_device_on_this_machine(monkeypatch):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    assert dist.accelerator_name() == expected
    if expected == "cpu":
        assert dist.device_for_rank(0) == torch.device("cpu")
    monkeypatch.setenv("DS_ACCELERATOR", "npu")
    assert dist.accelerator_name() == "npu", "DeepSpeed's own override wins, as in get_accelerator()"


def test_unwrap_takes_the_module_out_of_an_engine_like_wrapper():
    inner = torch.nn.Linear(2, 2)

    class Engine(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.module = inner

    assert dist.unwrap(Engine()) is inner
    assert dist.unwrap(inner) is inner

    class NotAnEngine(torch.nn.Module):
        module = "a string attribute"

    plain = NotAnEngine()
    assert dist.unwrap(plain) is plain


# A process whose sys.stderr behaves like ipykernel's OutStream: fileno() is a copy of descriptor 2.
_JUPYTER_LIKE_STDERR = """
import os, sys
class OutStream:
    def __init__(self): self.fd = os.dup(2)
    def fileno(self): return self.fd
    def write(self, text): os.write(self.fd, text.encode()); return len(text)
    def flush(self): pass
sys.stderr = OutStream()
"""


def _stderr_of(code: str) -> str:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-c", _JUPYTER_LIKE_STDERR + code], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stderr


@pytest.mark.slow
def test_op_probe_leaves_no_linker_noise_under_a_jupyter_like_stderr():
    """DeepSpeed's own silencing misses descriptor 2 when sys.stderr is a copy of it (as in a notebook)."""
    loud = _stderr_of("import deepspeed.ops; deepspeed.ops.__compatible_ops__")
    if "collect2" not in loud and "cannot find" not in loud:
        pytest.skip("libaio is installed here: DeepSpeed's probe links and prints nothing to silence")
    quiet = _stderr_of("from sftlib.dist import probe_ops_quietly; probe_ops_quietly()\n"
                       "import deepspeed.ops; assert 'async_io' in deepspeed.ops.__compatible_ops__")
    assert "collect2" not in quiet and "cannot find" not in quiet and "/usr/bin/ld" not in quiet, quiet


_WAIT_IN_A_BARRIER = """
import os, sys, time
from datetime import timedelta
import torch.distributed as dist
from sftlib.dist import init_distributed
init_distributed(timedelta(seconds=float(sys.argv[1])))
if dist.get_rank() == 1:
    time.sleep(20)  # rank 0 waits for it in the barrier
start = time.monotonic()
try:
    dist.barrier()
    print(f"barrier passed after {time.monotonic() - start:.1f} s")
except Exception as e:
    print(f"barrier gave up after {time.monotonic() - start:.1f} s: {type(e).__name__}")
"""


@pytest.mark.slow
def test_the_group_timeout_reaches_the_process_group(tmp_path):
    """A rank stuck behind a slow rank gives up after the timeout passed to init_distributed, not DeepSpeed's 10 min."""
    script = tmp_path / "wait.py"
    script.write_text(_WAIT_IN_A_BARRIER)
    env = {**dist.launcher_free_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(dist.free_port()),
           "WORLD_SIZE": "2", "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    ranks = [subprocess.Popen([sys.executable, str(script), "3"], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    out0 = ranks[0].communicate(timeout=120)[0]
    ranks[1].kill()
    ranks[1].communicate()
    said = [line for line in out0.splitlines() if line.startswith("barrier")]
    assert said and said[0].startswith("barrier gave up"), out0[-2000:]
    assert float(said[0].split("after ")[1].split(" s")[0]) < 15, said  # 3 s asked; rank 1 sleeps 20 s


def test_the_context_is_a_frozen_value_and_no_launcher_is_seen_without_rank(monkeypatch):
    import dataclasses

    ctx = dist.RankContext(rank=1, local_rank=0, world_size=2, device=torch.device("cpu"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.rank = 0
    assert not ctx.is_rank_0 and dataclasses.replace(ctx, rank=0).is_rank_0
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "3")  # left behind by something else: no launcher started this process
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert not dist.launched() and dist.local_rank() == 0
    if not torch.distributed.is_initialized():
        assert dist.global_rank() == 0
    monkeypatch.setenv("RANK", "2")
    assert dist.launched() and dist.local_rank() == 3


@pytest.mark.parametrize("env, one", [({}, True), ({"RANK": "0", "MASTER_ADDR": "127.0.0.1"}, True),
                                      ({"RANK": "0", "MASTER_ADDR": "localhost"}, True),
                                      ({"RANK": "0", "MASTER_ADDR": "192.0.2.7"}, False),
                                      ({"RANK": "0"}, False)])
def test_on_one_machine(monkeypatch, env, one):
    for name in ("RANK", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert dist.on_one_machine() is one


def test_stderr_of_catches_what_c_code_writes_to_descriptor_2(capfd):
    said = dist.stderr_of(lambda: os.write(2, b"from C\n"))
    assert said == "from C\n" and capfd.readouterr().err == ""


SETTLE = "from sftlib.dist import settle_gloo_hostname_warning as s; s(); s(); print('done')"


@pytest.mark.slow
def test_gloos_hostname_warning_is_kept_only_where_the_ranks_span_machines():
    """On a host whose name does not resolve, gloo falls back to the loopback address: right when every rank is
    on this machine (the warning goes), the likely reason ranks on other machines cannot connect (it stays)."""
    from tests.test_cli import can_rename_the_host, on_a_host_named_nowhere

    if not can_rename_the_host():
        pytest.skip("needs unshare --uts to give a process a hostname")
    said = {}
    for where, addr in (("here", "127.0.0.1"), ("elsewhere", "192.0.2.7")):
        env = {**dist.launcher_free_env(), "RANK": "0", "MASTER_ADDR": addr}
        out = subprocess.run(on_a_host_named_nowhere([sys.executable, "-c", SETTLE]), capture_output=True, text=True,
                             env=env, timeout=120)
        assert out.stdout == "done\n", out.stderr
        said[where] = out.stderr
    assert said["here"] == ""
    assert said["elsewhere"].count("Unable to resolve hostname") == 1, said


IN_PROCESS_MAIN = """
import json, os, sys
before = dict(os.environ)
from sftlib import train
train.main(sys.argv[1:])
after = dict(os.environ)
print(json.dumps({k: v for k, v in after.items() if before.get(k) != v}))
"""


@pytest.mark.slow
def test_an_in_process_run_leaves_no_launcher_variables(world, tmp_path):
    """A notebook kernel that ran train.main is not a launched rank afterwards: its environment gained no RANK,
    WORLD_SIZE or MASTER_* (only DeepSpeed's LOCAL_RANK=0, see dist.local_rank_for_deepspeed), so a job it starts
    needs no cleaned environment, and sftlib still sees it as not launched."""
    argv = ["--model_name_or_path", str(world["opt"]), "--data_path", str(world["data"]), "--dtype", "fp32",
            "--num_train_epochs", "1", "--max_seq_len", "32", "--per_device_train_batch_size", "64",
            "--data_output_path", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "out")]
    env = dist.launcher_free_env({"DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": ""})
    proc = subprocess.run([sys.executable, "-c", IN_PROCESS_MAIN, *argv], capture_output=True, text=True, env=env,
                          timeout=600, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-3000:]
    gained = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {k: v for k, v in gained.items() if k in dist.LAUNCHER_VARS} == {"LOCAL_RANK": "0"}, gained
    assert (tmp_path / "out" / "config.json").is_file()
