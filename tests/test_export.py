"""The training notebook, exported to a plain script, runs under `deepspeed --num_gpus 2` on CPU."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import DEEPSPEED, ROOT, cpu_env


@pytest.mark.slow
def test_exported_notebook_runs_on_two_ranks(world, tmp_path):
    script = tmp_path / "main_training_loop.py"
    jupytext = os.path.join(os.path.dirname(sys.executable), "jupytext")
    subprocess.run([jupytext, "--to", "py:percent", "-o", str(script),
                    os.path.join(ROOT, "notebooks", "05_main_training_loop.ipynb")], check=True, capture_output=True)
    text = script.read_text()
    assert "get_ipython" not in text and "!pip" not in text, "plain Python, no magics"
    # The script writes where the notebook writes, relative to notebooks/; point it at tmp_path instead.
    script.write_text(text.replace('OUT = "../outputs/nb05"', f'OUT = {str(tmp_path / "out")!r}'))
    env = cpu_env({"MPLBACKEND": "Agg"})  # two CPU ranks, on a GPU host too
    proc = subprocess.run([DEEPSPEED, "--num_gpus", "2", "--master_port", "29581", str(script)],
                          cwd=os.path.join(ROOT, "notebooks"), env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    history = json.loads((tmp_path / "out" / "model" / "training_history.json").read_text())
    assert history["world_size"] == 2
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model").config.model_type == "opt"
