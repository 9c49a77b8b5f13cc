"""Kill a save in the middle of writing, and look at what is left on disk.

``sftlib.zero.save_zero_three_model`` writes into a hidden temporary folder renamed into place at
the end. To kill it at the worst moment, the lesson hands the save a tokenizer that pauses once it
is written (the weights and config are already in the temporary folder): ``PausingTokenizer``.
``start_paused_save`` starts such a save in its own process, ``kill_when_paused`` SIGKILLs it.

One paused save from a terminal (kill it yourself with ``kill -9``)::

    python -m sftlib.lessons.atomic_save SRC DST --add 1 --pause-s 30

Explained in notebooks/04_zero3_saving.ipynb.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from sftlib.cli import run
from sftlib.dist import launcher_free_env
from sftlib.zero import save_zero_three_model

PAUSED = "paused mid-save"  # what a PausingTokenizer prints when it starts to sleep


class PausingTokenizer:
    """Saves ``tokenizer`` (if any), then prints what the folder holds and sleeps ``seconds``.

    Passed as ``tokenizer=`` to a save, it stops the saver with the save half done: everything but
    the save marker is in the temporary folder, nothing is renamed into place yet.
    """

    def __init__(self, tokenizer, seconds: float):
        self.tokenizer, self.seconds = tokenizer, seconds

    def save_pretrained(self, folder):
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder)
        print(f"sftlib: {PAUSED}, {sorted(os.listdir(folder))} written to {folder}", flush=True)
        time.sleep(self.seconds)


def resave(src, dst, add: float = 0.0, pause_s: float = 0.0) -> None:
    """One rank's save, on its own: load the HF folder ``src``, add ``add`` to every weight, save to ``dst``.

    With ``pause_s`` the save sleeps that long after the tokenizer, with the weights written: the
    process the atomic-save demo kills.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(add)
    tokenizer = AutoTokenizer.from_pretrained(src)
    if pause_s > 0:
        tokenizer = PausingTokenizer(tokenizer, pause_s)
    save_zero_three_model(model, 0, str(dst), 0, tokenizer)


def start_paused_save(src, dst, add: float = 1.0, pause_s: float = 120) -> subprocess.Popen:
    """Start ``python -m sftlib.lessons.atomic_save SRC DST --add ADD --pause-s PAUSE_S`` (output piped)."""
    cmd = [sys.executable, "-m", "sftlib.lessons.atomic_save", str(src), str(dst), "--add", str(add),
           "--pause-s", str(pause_s)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=launcher_free_env())


def kill_when_paused(proc: subprocess.Popen, dst) -> dict:
    """SIGKILL a ``start_paused_save`` process once its weights are in the temp folder.

    Returns what was on disk at the moment of the kill (the temp folder and its files) and the
    return code.
    """
    dst = Path(dst)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if PAUSED in line:
            break
    else:
        proc.wait()
        raise RuntimeError("the saver ended before pausing:\n" + "".join(lines[-20:]))
    temps = sorted(p for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}.tmp-"))
    seen = {"temp": [str(t) for t in temps], "temp_files": sorted(os.listdir(temps[0])) if temps else []}
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return {**seen, "returncode": proc.returncode}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Re-save an HF folder, optionally pausing mid-save")
    p.add_argument("src", help="HF model folder to load")
    p.add_argument("dst", help="folder to save into (atomically)")
    p.add_argument("--add", type=float, default=0.0, help="added to every weight first")
    p.add_argument("--pause-s", type=float, default=0.0, help="sleep this long with the save half done")
    args = p.parse_args(argv)
    resave(args.src, args.dst, add=args.add, pause_s=args.pause_s)


if __name__ == "__main__":
    run(main)
