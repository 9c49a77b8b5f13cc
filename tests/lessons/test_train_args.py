"""sftlib.lessons.train_args: the command lines it writes parse to the run they describe."""

from pathlib import Path

from sftlib.lessons.train_args import DEMO, demo_args, flags, train_args
from sftlib.train import parse_args


def test_train_args_keeps_the_defaults_but_the_cpu_pair(tmp_path):
    args = parse_args(train_args("toy_world/opt-tiny", "toy_world/data", tmp_path / "run"))
    plain = parse_args(["--model_name_or_path", "toy_world/opt-tiny"])
    assert args.data_path == ["toy_world/data"] and args.output_dir == str(tmp_path / "run" / "model")
    assert args.data_output_path == str(tmp_path / "run" / "data_files")
    assert (args.data_split, args.dtype) == ("10,0,0", "fp32")
    changed = {k for k, v in vars(args).items() if v != vars(plain)[k]}
    assert changed == {"data_path", "output_dir", "data_output_path", "data_split", "dtype"}


def test_overrides_replace_add_and_drop_flags(tmp_path):
    argv = train_args("m", ["a", "b"], tmp_path, dtype="bf16", lora_dim=8, only_optimize_lora=True,
                      output_dir=None, packing=False)
    assert argv.count("--dtype") == 1 and argv[argv.index("--dtype") + 1] == "bf16"
    args = parse_args(argv)
    assert args.data_path == ["a", "b"] and args.lora_dim == 8 and args.only_optimize_lora
    assert args.output_dir is None and "--output_dir" not in argv and "--packing" not in argv


def test_flags_writes_each_kind_of_value():
    assert flags({"a": 1, "b": True, "c": None, "d": False, "e": ("x", Path("y")), "f": 1e-3}) == \
        ["--a", "1", "--b", "--e", "x", "y", "--f", "0.001"]


def test_demo_args_are_make_demos_settings(tmp_path):
    args = parse_args(demo_args("m", "d", tmp_path, per_device_train_batch_size=8))
    assert args.per_device_train_batch_size == 8 and args.num_train_epochs == DEMO["num_train_epochs"] == 8
    assert args.seeded_sampler and args.learning_rate == 1e-3 and args.max_seq_len == 64
    argv = demo_args("m", "d", tmp_path)
    assert argv[argv.index("--learning_rate") + 1] == "1e-3", "written as the demo's command line shows it"


def test_flag_table_lists_every_flag_once_with_its_help_and_value(tmp_path):
    from sftlib.arguments import build_parser
    from sftlib.lessons.train_args import flag_table

    parser = build_parser()
    args = parser.parse_args(train_args("m", ["a", "b"], tmp_path, packing=True))
    rows = {r["flag"]: r for r in flag_table(parser, args)}
    assert {f.removeprefix("--") for f in rows} == set(vars(args)) and len(rows) == len(vars(args))
    assert rows["--data_path"]["this run"] == "a b" and rows["--data_path"]["default"] == "Dahoas/rm-static"
    assert (rows["--packing"]["default"], rows["--packing"]["this run"]) == ("unset", "auto")
    assert (rows["--seeded_sampler"]["default"], rows["--seeded_sampler"]["group"]) == ("off", "sftlib additions")
    assert rows["--model_name_or_path"]["default"] == "required"
    assert all(r["help"] for r in rows.values()), "every flag explains itself"
    assert rows["--dtype"]["help"] == next(a.help for a in parser._actions if a.dest == "dtype")
