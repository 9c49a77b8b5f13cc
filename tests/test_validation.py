"""sftlib.arguments: every bad input is refused before any work, in one line, exit 2, nothing written.

Each case runs ``python -m sftlib.train`` in-process through ``sftlib.cli.run`` (the same code path
as the command line, without a new interpreter per case), on the CPU accelerator on any host (the
fp16 case expects the CPU's refusal). ``python -m tests.test_validation`` prints the table of inputs
and errors."""

import json
import shutil
import sys

import pytest

from tests.helpers import ROOT, run_cli


@pytest.fixture(autouse=True)
def on_the_cpu(monkeypatch):
    """These cases assume a CPU: DeepSpeed's own override makes sftlib (and DeepSpeed, when it detects
    afresh) pick it on a GPU host too."""
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")


def bad_data(world, tmp, kind):
    folder = tmp / f"data_{kind}"
    folder.mkdir()
    shutil.copy(world["data"] / "eval.json", folder / "eval.json")
    lines = (world["data"] / "train.json").read_bytes().splitlines(keepends=True)
    if kind == "bytes":
        lines[6] = lines[6].replace(b'"prompt": "', b'"prompt": "\xff')
    elif kind == "json":
        lines[6] = b'{"prompt": "unterminated\n'
    elif kind == "row":
        lines[6] = json.dumps({"prompt": "no answer"}).encode() + b"\n"
    (folder / "train.json").write_bytes(b"".join(lines))
    return str(folder)


def bad_model(world, tmp, kind):
    folder = tmp / f"model_{kind}"
    shutil.copytree(world["opt"], folder)
    if kind == "truncated":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif kind == "no_config":
        (folder / "config.json").unlink()
    return str(folder)


def tiny_data(world, tmp, kind):
    """A 4-row file (its 9:1 cut leaves eval no row), or 20 chats of which row 13 has an unknown role."""
    if kind == "rows":
        lines = (world["data"] / "train.json").read_bytes().splitlines(keepends=True)[:4]
        (tmp / "rows.jsonl").write_bytes(b"".join(lines))
        return {"--data_path": f"local/jsonfile={tmp / 'rows.jsonl'}"}
    rows = [json.loads(line) for line in (world["chat"] / "train.json").read_text().splitlines()[:20]]
    rows[12]["messages"][1]["role"] = "robot"
    (tmp / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    template = str(world["chat"] / "chat_template.jinja")
    return {"--data_path": f"messages={tmp / 'chats.jsonl'}", "--chat_template": template}


def foreign_output(tmp):
    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("mine")
    return None


# (id, change: flag -> value (None removes the flag) or a callable(world, tmp) returning such a dict, error text)
CASES = [
    ("fp16 on a CPU", {"--dtype": "fp16"}, "--dtype fp16 is not for a CPU"),
    ("unknown dtype", {"--dtype": "fp8"}, "argument --dtype: invalid choice: 'fp8'"),
    ("missing model", {"--model_name_or_path": "./no/such/model"}, "no such model folder"),
    ("no model flag", {"--model_name_or_path": None}, "the following arguments are required: --model_name_or_path"),
    ("missing data", {"--data_path": "./no/such/data"}, "no such file or folder"),
    ("unknown dataset", {"--data_path": "nobody/no-such-set"}, "unknown dataset 'nobody/no-such-set'"),
    ("zero epochs", {"--num_train_epochs": "0"}, "--num_train_epochs must be at least 1"),
    ("max_seq_len 0", {"--max_seq_len": "0"}, "--max_seq_len must be at least 2"),
    ("max_seq_len too long", {"--max_seq_len": "4096"}, "longer than"),
    ("zero stage 5", {"--zero_stage": "5"}, "--zero_stage must be 0, 1, 2 or 3"),
    ("2023 labels with packing", {"--labels_2023": "", "--packing": ""}, "--labels_2023 reproduces the 2023 labels"),
    ("negative lr", {"--learning_rate": "-0.001"}, "--learning_rate must be a positive number"),
    ("nan lr", {"--learning_rate": "nan"}, "--learning_rate must be a positive number"),
    ("zero lora lr", {"--lora_learning_rate": "0"}, "--lora_learning_rate must be a positive number"),
    ("batch 0", {"--per_device_train_batch_size": "0"}, "--per_device_train_batch_size must be a positive integer"),
    ("eval batch -2", {"--per_device_eval_batch_size": "-2"}, "--per_device_eval_batch_size must be a positive"),
    ("not a number", {"--per_device_train_batch_size": "many"}, "invalid int value: 'many'"),
    ("GAS 0", {"--gradient_accumulation_steps": "0"}, "--gradient_accumulation_steps must be a positive integer"),
    ("negative weight decay", {"--weight_decay": "-0.1"}, "--weight_decay must be 0 or more"),
    ("negative warmup", {"--num_warmup_steps": "-1"}, "--num_warmup_steps must be 0 or more"),
    ("negative seed", {"--seed": "-1"}, "--seed must be between 0 and 2**32 - 1"),
    ("dropout 1.5", {"--dropout": "1.5"}, "--dropout must be a probability in [0, 1)"),
    ("negative lora_dim", {"--lora_dim": "-4"}, "--lora_dim must be 0 (no LoRA) or a positive rank"),
    ("negative save_steps", {"--save_steps": "-1"}, "--save_steps must be 0"),
    ("save_total_limit 0", {"--save_steps": "5", "--save_total_limit": "0"}, "--save_total_limit must be at least 1"),
    ("limit without saves", {"--save_total_limit": "2"}, "pass --save_steps N too"),
    ("cache timeout 0", {"--data_cache_timeout": "0"}, "--data_cache_timeout must be a positive number"),
    ("dist timeout 0", {"--dist_timeout": "0"}, "--dist_timeout must be a positive number of minutes"),
    ("dist timeout past a week", {"--dist_timeout": "20000"}, "--dist_timeout must be a positive number of minutes, "
                                                             "at most 10080"),
    ("offload without ZeRO", {"--offload": ""}, "--zero_stage 0 has no ZeRO optimizer"),
    ("unknown scheduler", {"--lr_scheduler_type": "triangle"}, "argument --lr_scheduler_type: invalid choice"),
    ("unknown flag", {"--learning-rate": "1e-3"}, "unrecognized arguments: --learning-rate"),
    ("packing + dynamic padding", {"--packing": "mask", "--dynamic_padding": ""}, "exclude each other"),
    ("only-LoRA without LoRA", {"--only_optimize_lora": ""}, "--only_optimize_lora needs --lora_dim > 0"),
    ("weights count", {"--data_weights": "1 2"}, "--data_weights has 2 weights for 1 --data_path"),
    ("negative weight", {"--data_weights": "-1"}, "--data_weights must be non-negative"),
    ("two-part split", {"--data_split": "1,2"}, "has 2 parts; it needs 3"),
    ("word split", {"--data_split": "a,b,c"}, "use 3 comma-separated numbers"),
    ("empty eot", {"--add_eot_token": "", "--eot_token": [" "]}, "--add_eot_token needs a non-empty --eot_token"),
    ("deepspeed_config", {"--deepspeed_config": "ds.json"}, "--deepspeed_config is not read"),
    ("missing resume folder", {"--resume_from_checkpoint": "./no/ckpt"}, "no such folder"),
    ("non-UTF-8 data", lambda w, t: {"--data_path": bad_data(w, t, "bytes")}, "train.json:7: byte 0xff at column"),
    ("malformed json line", lambda w, t: {"--data_path": bad_data(w, t, "json")}, "train.json:7: malformed json"),
    ("row without chosen", lambda w, t: {"--data_path": bad_data(w, t, "row")}, "train.json:7: line is missing"),
    ("no phase-1 rows", {"--data_split": "0,10,0"}, "phase 1 gets no train rows"),
    ("4-row file, no eval row", lambda w, t: tiny_data(w, t, "rows"), "phase 1 gets no eval rows (4 rows cut 9:1"),
    ("unknown chat role", lambda w, t: tiny_data(w, t, "chats"), "chats.jsonl:13: messages[1] has the role 'robot'"),
    ("truncated weights", lambda w, t: {"--model_name_or_path": bad_model(w, t, "truncated")}, "are unreadable"),
    ("model without config", lambda w, t: {"--model_name_or_path": bad_model(w, t, "no_config")}, "no config.json"),
    ("output dir is a file", lambda w, t: {"--output_dir": str((t / "f").write_text("x") and t / "f")}, "is a file"),
    ("foreign output dir", lambda w, t: foreign_output(t) or {}, "not empty and is not a previous save"),
    ("checkpoints = output", lambda w, t: {"--save_steps": "5", "--checkpoint_dir": str(t / "out")},
     "inside) the checkpoint folder"),
    ("output inside TB logs", lambda w, t: {"--enable_tensorboard": "", "--tensorboard_path": str(t),
                                            "--output_dir": str(t / "sftlib" / "m")}, "inside TensorBoard's"),
]


def argv_for(world, tmp, change):
    base = {"--model_name_or_path": str(world["opt"]), "--data_path": str(world["data"]), "--data_split": "10,0,0",
            "--max_seq_len": "48", "--dtype": "fp32", "--output_dir": str(tmp / "out"),
            "--data_output_path": str(tmp / "cache")}
    base.update(change(world, tmp) if callable(change) else change)
    argv = []
    for flag, value in base.items():
        if value is not None:
            argv += [flag] + (value if isinstance(value, list) else value.split())
    return argv


def refuse(world, tmp, change, capsys):
    from sftlib import cli, train

    argv = argv_for(world, tmp, change)
    before = sorted(p.name for p in tmp.iterdir())
    with pytest.raises(SystemExit) as info:
        cli.run(train.main, argv)
    err = capsys.readouterr().err.strip()
    assert sorted(p.name for p in tmp.iterdir()) == before, "nothing written"
    return info.value.code, err


@pytest.mark.parametrize("case, change, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_one_line_before_any_work(world, tmp_path, capsys, case, change, message):
    code, err = refuse(world, tmp_path, change, capsys)
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert message in err, err


@pytest.mark.parametrize("stage", ["1", "2", "3"])
def test_offload_with_a_zero_optimizer_is_accepted(world, tmp_path, stage):
    """ZeRO stages 1 and 2 (stage_1_and_2.py, cpu_offload) and 3 (stage3.py) keep the optimizer's states on
    the CPU: only stage 0 is refused."""
    from sftlib.arguments import parse_args, validate_args

    validate_args(parse_args(argv_for(world, tmp_path, {"--offload": "", "--zero_stage": stage})))


def test_dist_timeout_defaults_to_deepspeeds_and_makes_a_timedelta(world, tmp_path, monkeypatch):
    from datetime import timedelta

    from deepspeed.constants import default_pg_timeout

    from sftlib.arguments import parse_args

    args = parse_args(argv_for(world, tmp_path, {}))
    assert timedelta(minutes=args.dist_timeout) == default_pg_timeout
    if "DEEPSPEED_TIMEOUT" not in __import__("os").environ:
        assert args.dist_timeout == 10
    assert parse_args(argv_for(world, tmp_path, {"--dist_timeout": "45"})).dist_timeout == 45


def test_on_a_simulated_gpu_host_the_cases_still_see_a_cpu(world, tmp_path, capsys, monkeypatch):
    """CUDA reported available (a GPU host): the fp16 case still gets the CPU's refusal, in this process
    (the fixture) and from the real command line (run_cli's environment)."""
    import torch

    from sftlib.arguments import check_combinations, parse_args

    args = parse_args(argv_for(world, tmp_path, {"--dtype": "fp16"}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with monkeypatch.context() as host:  # the simulation is real: left alone, the host's CUDA accepts fp16
        host.delenv("DS_ACCELERATOR")
        check_combinations(args)
    with pytest.raises(Exception, match="--dtype fp16 is not for a CPU"):
        check_combinations(args)
    code, err = refuse(world, tmp_path, {"--dtype": "fp16"}, capsys)
    assert code == 2 and err == err.strip() and err.startswith("error: --dtype fp16 is not for a CPU"), err
    fake_gpu = ("import runpy, sys, torch; torch.cuda.is_available = lambda: True; "
                "sys.argv[0] = 'sftlib.train'; runpy.run_module('sftlib.train', run_name='__main__')")
    proc = run_cli([sys.executable, "-c", fake_gpu, *argv_for(world, tmp_path, {"--dtype": "fp16"})])
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --dtype fp16 is not for a CPU")



def test_validation_returns_the_data_it_read_once_per_node(world, tmp_path, monkeypatch):
    """The node's local rank 0 reads each local file once (rows and fingerprint), for the build to take;
    its other ranks read no rows (a bad one is local rank 0's to report) and hash the bytes later."""
    from sftlib.arguments import parse_args, validate_args

    args = parse_args(argv_for(world, tmp_path, {"--data_path": bad_data(world, tmp_path, "json")}))
    monkeypatch.setenv("RANK", "1")  # a launched rank: dist.local_rank() reads LOCAL_RANK under a launcher only
    monkeypatch.setenv("LOCAL_RANK", "1")
    checked = validate_args(args)
    assert [(s.entry, s.splits, s.fingerprint) for s in checked.sets] == [(args.data_path[0], None, None)]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(Exception, match="train.json:7: malformed json"):
        validate_args(args)
    good = validate_args(parse_args(argv_for(world, tmp_path, {})))
    assert good.is_for([str(world["data"])], [], "10,0,0")
    assert len(good.sets[0].splits["train"]) == len((world["data"] / "train.json").read_text().splitlines())
    assert good.sets[0].fingerprint == good.fingerprinted().sets[0].fingerprint

# --------------------------------------------------------------------------------------------
# --help: every flag explained, with its default, and no DeepSpeed import before it
# --------------------------------------------------------------------------------------------

def flag_actions():
    from sftlib.arguments import build_parser

    return [a for a in build_parser()._actions if a.option_strings and a.dest != "help"]


def test_every_flag_has_a_help_text():
    actions = flag_actions()
    assert len(actions) > 50
    assert [a.option_strings[0] for a in actions if not (a.help or "").strip()] == []


def test_help_shows_every_default_and_the_module_command():
    from sftlib.arguments import shown_default

    proc = run_cli([sys.executable, "-m", "sftlib.train", "--help"], env_extra={"COLUMNS": "1000"}, cpu=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m sftlib.train --model_name_or_path MODEL")
    lines, flag = {}, None  # a flag's entry: its line and the deeper-indented lines under it
    for line in proc.stdout.splitlines():
        if line.startswith("  --"):
            flag = line.split()[0]
            lines[flag] = line.strip()
        elif flag and line.startswith("    "):
            lines[flag] += " " + line.strip()
        else:
            flag = None
    for action in flag_actions():
        line = lines[action.option_strings[0]]
        if action.required:
            assert line.endswith("(required)"), line
        else:
            assert line.endswith(f"(default: {shown_default(action.default)})"), line
    assert "(default: 16)" in lines["--per_device_train_batch_size"] and "(default: 0.001)" in lines["--learning_rate"]


def test_help_prints_no_deepspeed_warning_and_imports_no_deepspeed():
    proc = run_cli([sys.executable, "-m", "sftlib.train", "--help"], cpu=False)  # DeepSpeed detects the accelerator
    assert proc.returncode == 0 and "usage:" in proc.stdout
    said = proc.stdout + proc.stderr
    assert "Setting accelerator" not in said and "ds_accelerator" not in said, said[:500]
    probe = ("import sys; from sftlib.arguments import build_parser, parse_args; build_parser(); "
             "parse_args(['--model_name_or_path', 'x']); print(sorted(m for m in sys.modules if 'deepspeed' in m))")
    proc = run_cli([sys.executable, "-c", probe], cpu=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_deepspeeds_own_flags_are_declared_as_deepspeed_declares_them():
    """sftlib declares ``deepspeed.add_config_arguments``' flags itself (no import before --help): the same
    flags, destinations, defaults, types and kinds as DeepSpeed's."""
    import argparse

    import deepspeed

    def shape(actions):
        return {a.dest: (tuple(a.option_strings), a.default, a.type, a.nargs, a.const, type(a).__name__)
                for a in actions if a.dest != "help"}

    theirs = shape(deepspeed.add_config_arguments(argparse.ArgumentParser())._actions)
    ours = shape(flag_actions())
    assert len(theirs) == 4 and {k: ours.get(k) for k in theirs} == theirs


if __name__ == "__main__":  # the table: input, one-line error
    import os
    import tempfile
    from pathlib import Path

    sys.path.insert(0, ROOT)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["DS_ACCELERATOR"] = "cpu"  # as the tests: the fp16 row shows the CPU's refusal

    class Capture:
        def readouterr(self):
            return type("R", (), {"err": sys.stderr.getvalue()})()

    from sftlib.lessons.toy import ensure_toy_world

    world = ensure_toy_world(("opt",), chat=True)
    print("| # | bad input | error |\n|---|---|---|")
    for i, (case, change, _) in enumerate(CASES, 1):
        tmp = Path(tempfile.mkdtemp())
        real, sys.stderr = sys.stderr, __import__("io").StringIO()
        try:
            _, err = refuse(world, tmp, change, Capture())
        finally:
            sys.stderr, captured = real, sys.stderr
        print(f"| {i} | {case} | `{err.replace(str(tmp), '<tmp>').replace(ROOT, '.')}` |")
