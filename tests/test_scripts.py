"""training_scripts/ and evaluation_scripts/: valid bash, and arguments sftlib's parsers accept."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

SCRIPTS = sorted(Path(ROOT).glob("training_scripts/**/*.sh")) + sorted(Path(ROOT).glob("evaluation_scripts/*.sh"))
STUB = """#!{python}
import json, sys
argv = sys.argv[1:]
module = argv[argv.index("--module") + 1] if "--module" in argv else argv[1]
rest = argv[argv.index(module) + 1:]
json.dump({{"launcher": argv[:argv.index(module)], "module": module, "args": rest}}, open({out!r}, "w"))
"""


def test_there_is_a_script_for_each_recipe():
    names = {p.relative_to(ROOT).as_posix() for p in SCRIPTS}
    assert {"training_scripts/opt/single_gpu/run_1.3b.sh", "training_scripts/opt/single_node/run_1.3b.sh",
            "training_scripts/opt/multi_node/run_66b.sh", "training_scripts/llama2/run_llama2_7b.sh",
            "training_scripts/llama2/run_llama2_7b_lora.sh", "training_scripts/other_language/run_chinese.sh",
            "training_scripts/other_language/run_japanese.sh", "training_scripts/cpu/run_tiny.sh",
            "evaluation_scripts/run_prompt.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_bash_syntax(script):
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


@pytest.mark.parametrize("script", [p for p in SCRIPTS if "training_scripts" in str(p)],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_training_arguments_are_accepted(script, tmp_path):
    from sftlib.train import parse_args

    record = tmp_path / "argv.json"
    stub = tmp_path / "launcher"
    stub.write_text(STUB.format(python=sys.executable, out=str(record)))
    stub.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "SFTLIB_LAUNCHER": str(stub), "PYTHON": sys.executable,
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(["bash", str(script), str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    call = json.loads(record.read_text())
    assert call["module"] == "sftlib.train"
    args = parse_args(call["args"])
    assert args.output_dir == str(tmp_path / "out")
    assert args.model_name_or_path


def test_evaluation_script_arguments_are_accepted(world, tmp_path):
    from sftlib.prompt_eval import parse_args

    script = Path(ROOT) / "evaluation_scripts" / "run_prompt.sh"
    record = tmp_path / "argv.json"
    stub = tmp_path / "python"
    stub.write_text(STUB.format(python=sys.executable, out=str(record)))
    stub.chmod(0o755)
    proc = subprocess.run(["bash", str(script), "base", "tuned", "contrastive"], cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": str(stub)}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    call = json.loads(record.read_text())
    args = parse_args(call["args"])
    assert (args.model_name_or_path_baseline, args.strategy) == ("base", "contrastive")
