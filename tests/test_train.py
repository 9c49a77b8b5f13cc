"""sftlib.train: a real DeepSpeed run saves a complete HF folder; bad input fails in one line."""

import json
import os
import sys

import pytest

from tests.helpers import DEEPSPEED, run_cli

TRAIN = [sys.executable, "-m", "sftlib.train"]


def small_args(world, out, *extra):
    return ["--model_name_or_path", str(world["opt"]), "--data_path", str(world["data"]),
            "--data_split", "10,0,0", "--max_seq_len", "48", "--per_device_train_batch_size", "32",
            "--num_train_epochs", "1", "--dtype", "fp32", "--output_dir", str(out), *extra]


def assert_loads_and_generates(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    names = set(os.listdir(folder))
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(n.endswith(".bin") for n in names)
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.eos_token == "</s>" and len(tok) > 1000, "the whole tokenizer came back"
    model = AutoModelForCausalLM.from_pretrained(folder)
    gen = pipeline("text-generation", model=model, tokenizer=tok)
    out = gen("\n\nHuman: What is the opposite of hot?\n\nAssistant:", max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"].startswith("\n\nHuman: What is the opposite of hot?")


def test_one_rank_run_trains_and_saves(world, tmp_path):
    from sftlib.train import main

    history = main(small_args(world, tmp_path / "sft"))
    assert history["loss"][-1] < history["loss"][0]
    assert history["eval"][-1]["ppl"] < history["eval"][0]["ppl"]
    assert_loads_and_generates(tmp_path / "sft")
    marker = json.loads((tmp_path / "sft" / "sftlib_save.json").read_text())
    assert "training_history.json" in marker["files"], "the history is part of the atomic save"
    assert json.loads((tmp_path / "sft" / "training_history.json").read_text())["loss"] == history["loss"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")], "no temporary folder left behind"


def test_every_rate_of_a_log_line_is_timed_over_the_same_span(world, tmp_path, capsys):
    """tokens/s over samples/s is the real tokens per sample of that step, on every line: the first
    step of an epoch (after an evaluation) and the step after a checkpoint included."""
    import re

    import torch

    from sftlib.train import main

    args = small_args(world, tmp_path / "sft", "--num_train_epochs", "2", "--per_device_train_batch_size", "64",
                      "--save_steps", "3")
    main(args)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert len(lines) == 12
    from sftlib.data import create_prompt_dataset
    from sftlib.model import load_hf_tokenizer

    tok = load_hf_tokenizer(str(world["opt"]))
    train_set, _ = create_prompt_dataset(0, [str(world["data"])], "10,0,0", str(tmp_path / "cache"), 1, 1234, tok,
                                         48, end_of_conversation_token=tok.eos_token)
    lengths = torch.stack([train_set[i]["attention_mask"] for i in range(len(train_set))]).sum(1)
    for line in lines:
        rate, unit = re.search(r"\| ([\d.]+)(k?) tok/s", line).groups()
        tokens_per_s = float(rate) * (1000 if unit else 1)
        samples_per_s = float(re.search(r"([\d.]+) samples/s", line).group(1))
        per_sample = tokens_per_s / samples_per_s  # "1.2k" keeps 2-3 digits: 5% either way
        assert 0.95 * lengths.min() <= per_sample <= 1.05 * lengths.max(), line


@pytest.mark.slow
def test_cpu_script_two_ranks_zero3_saves_a_loadable_folder(world, tmp_path):
    """training_scripts/cpu/run_tiny.sh: `deepspeed --num_gpus 2` on CPU ranks, ZeRO-3."""
    out = tmp_path / "z3"
    proc = run_cli(["bash", "training_scripts/cpu/run_tiny.sh", str(out), "3"],
                   env_extra={"PYTHON": sys.executable, "SFTLIB_LAUNCHER": DEEPSPEED, "MASTER_PORT": "29561"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Total Micro Batches" in (tmp_path / "z3.log").read_text()
    assert json.loads((out / "training_history.json").read_text())["world_size"] == 2
    assert_loads_and_generates(out)


def run_cli_in_process(args, capsys):
    """``python -m sftlib.train ARGS`` without a new interpreter: (exit code, stderr)."""
    from sftlib import cli, train

    with pytest.raises(SystemExit) as exit_info:
        cli.run(train.main, args)
    return exit_info.value.code, capsys.readouterr().err


def test_bad_input_from_the_real_command_line(world, tmp_path):
    proc = run_cli(TRAIN + small_args(world, tmp_path / "out", "--dtype", "fp16"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --dtype fp16 is not for a CPU")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, message", [
    (("--dtype", "fp16"), "--dtype fp16 is not for a CPU"),
    (("--model_name_or_path", "./no/such/model"), "no such model folder"),
    (("--data_path", "./no/such/data"), "no such file or folder"),
    (("--num_train_epochs", "0"), "--num_train_epochs must be at least 1"),
])
def test_bad_input_is_one_line_and_writes_nothing(world, tmp_path, capsys, change, message, monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")  # the CPU's refusal of fp16, on a GPU host too
    args = small_args(world, tmp_path / "out")
    i = args.index(change[0])
    args[i + 1] = change[1]
    code, err = run_cli_in_process(args, capsys)
    assert code == 2
    assert err.strip().startswith("error: ") and len(err.strip().splitlines()) == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_unwritable_output_dir(world, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, err = run_cli_in_process(small_args(world, blocker / "out"), capsys)
    assert code == 2 and "cannot be written" in err


def test_missing_data_file_names_the_file(world, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.json").write_text((world["data"] / "train.json").read_text())
    code, err = run_cli_in_process(small_args(world, tmp_path / "out", "--data_path", str(data)), capsys)
    assert code == 2 and "no eval.json" in err and str(data) in err
    assert not (tmp_path / "out").exists()


def test_hub_id_offline_is_a_clear_error(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, err = run_cli_in_process(small_args(world, tmp_path / "out", "--model_name_or_path", "facebook/opt-1.3b"),
                                   capsys)
    assert code == 2 and "'facebook/opt-1.3b'" in err and "offline" in err


def one_rank_args(world, tmp_path, *extra):
    from sftlib import train

    args = train.parse_args(small_args(world, tmp_path / "out", "--data_output_path", str(tmp_path / "cache"), *extra))
    train.setup_distributed(args)
    return args


def test_default_batches_are_deepspeed_chats_and_the_seeded_sampler_is_opt_in(world, tmp_path):
    """torch's DistributedSampler defaults (seed 0, shuffled, train and eval) unless --seeded_sampler."""
    import torch

    from sftlib import train
    from sftlib.model import load_hf_tokenizer

    tok = load_hf_tokenizer(str(world["opt"]))

    def orders(*extra):
        train_dl, eval_dl = train.build_dataloaders(one_rank_args(world, tmp_path, *extra), tok)
        return list(train_dl.sampler), list(eval_dl.sampler), len(train_dl.dataset), len(eval_dl.dataset)

    def torch_default(n):  # what DistributedSampler(dataset) does with seed 0 on one rank, written out
        return torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()

    tr, ev, n_train, n_eval = orders()
    assert tr == torch_default(n_train) and ev == torch_default(n_eval)
    tr, ev, _, _ = orders("--seeded_sampler")
    assert tr == torch.randperm(n_train, generator=torch.Generator().manual_seed(1234)).tolist()
    assert ev == list(range(n_eval))


def test_model_files_go_beside_this_runs_logs_and_nothing_else_is_touched(world, tmp_path):
    from transformers import AutoModelForCausalLM

    from sftlib import save
    from sftlib.errors import SFTError

    model = AutoModelForCausalLM.from_pretrained(world["opt"])
    out = tmp_path / "out"
    (out / "sftlib").mkdir(parents=True)
    (out / "sftlib" / "events.out.tfevents.1").write_text("logs")
    with pytest.raises(SFTError, match="not empty and is not a previous save"):
        save.write_hf_folder(model, model.state_dict(), None, out)  # logs the caller did not declare
    save.write_hf_folder(model, model.state_dict(), None, out, allow={"sftlib"})
    (out / "pytorch_model.bin").write_bytes(b"")  # as if a previous save had written it ...
    marker = json.loads((out / save.SAVE_MARKER).read_text())
    (out / save.SAVE_MARKER).write_text(json.dumps({**marker, "files": marker["files"] + ["pytorch_model.bin"]}))
    (out / "ds_tensorboard_logs").mkdir()  # ... and a second run logs beside the first save
    save.write_hf_folder(model, model.state_dict(), None, out, allow={"sftlib", "ds_tensorboard_logs"})
    assert (out / "sftlib" / "events.out.tfevents.1").read_text() == "logs" and (out / "ds_tensorboard_logs").is_dir()
    assert not (out / "pytorch_model.bin").exists(), "the previous save's own stale file is gone"
    assert not [p for p in out.iterdir() if p.name.startswith(".")] and not list(tmp_path.glob(".out*"))
    AutoModelForCausalLM.from_pretrained(out)


def test_a_failed_final_save_puts_the_weights_in_a_rescue_folder(world, tmp_path):
    from transformers import AutoModelForCausalLM

    from sftlib import train
    from sftlib.errors import SFTError
    from sftlib.history import History
    from sftlib.model import load_hf_tokenizer

    args = one_rank_args(world, tmp_path)
    (tmp_path / "blocker").write_text("a file where the output folder's parent should be")
    args.output_dir = str(tmp_path / "blocker" / "out")  # as if the disk changed during training
    model = AutoModelForCausalLM.from_pretrained(world["opt"])
    with pytest.raises(SFTError, match=r"the final save to .*blocker/out failed .*the trained weights are in") as info:
        train.save_model(args, model, load_hf_tokenizer(str(world["opt"])), History())
    rescued = [p for p in tmp_path.iterdir() if p.name.startswith("out.rescued-")]
    assert len(rescued) == 1 and str(rescued[0]) in str(info.value)
    again = AutoModelForCausalLM.from_pretrained(rescued[0])
    assert all(torch_equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def torch_equal(a, b):
    import torch

    return torch.equal(a, b)


def test_the_final_save_goes_through_the_saver_passed_in(world, tmp_path):
    """``save_model(..., saver=)``: a lesson brings its own saver (here one that records, then writes as
    the default one does) instead of patching the library."""
    from transformers import AutoModelForCausalLM

    from sftlib import save, train
    from sftlib.history import History
    from sftlib.model import load_hf_tokenizer

    args = one_rank_args(world, tmp_path)
    calls = []

    def recording_saver(model, global_rank, save_dir, zero_stage=0, tokenizer=None, allow=()):
        calls.append((global_rank, save_dir))
        save.save_on_rank_0(model, global_rank, save_dir, zero_stage, tokenizer, allow)

    model = AutoModelForCausalLM.from_pretrained(world["opt"])
    train.save_model(args, model, load_hf_tokenizer(str(world["opt"])), History(step=[1], loss=[2.5]),
                     saver=recording_saver)
    assert calls == [(0, args.output_dir)]
    saved = json.loads((tmp_path / "out" / "training_history.json").read_text())
    assert saved["loss"] == [2.5] and saved["output_dir"] == args.output_dir
    assert "training_history.json" in json.loads((tmp_path / "out" / save.SAVE_MARKER).read_text())["files"]
