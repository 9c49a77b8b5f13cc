"""The one builder of ``sftlib.train`` command lines that notebooks, the demo and tests share.

``train_args(model, data, out, **overrides)`` writes a run in DeepSpeed-Chat's flag names: the run
folder ``out`` holds the saved model (``out/model``) and the data cache (``out/data_files``), as
``make demo``'s ``outputs/demo`` does. Every flag left out keeps ``sftlib.train``'s default (which
is DeepSpeed-Chat's), except the two a CPU run of the toy needs: all the data for phase 1
(``--data_split 10,0,0``) and fp32. ``demo_args`` starts from ``make demo``'s settings instead.
``flag_table`` lists a parser's flags with their help, the argument table of notebook 05.

    train_args("toy_world/opt-tiny", "toy_world/data", "outputs/run", num_train_epochs=1, lora_dim=8)
"""

from __future__ import annotations

from pathlib import Path

CPU_TOY = {  # what a CPU run of the toy always sets
    "data_split": "10,0,0",  # the whole set for phase 1 (the default 2,4,4 keeps 20% for SFT)
    "dtype": "fp32",  # sftlib refuses fp16 on a CPU; bf16 works but is much slower than fp32 on common CPUs
}

DEMO = {  # make demo's settings, sized for a 2-core CPU
    "data_split": "10,0,0",
    "max_seq_len": 64,  # toy prompts are short (real runs: 512)
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "learning_rate": "1e-3",  # as written on the command line (str(1e-3) is "0.001")
    "num_train_epochs": 8,
    "num_warmup_steps": 0,
    "lr_scheduler_type": "cosine",
    "zero_stage": 0,
    "dtype": "fp32",
    "seed": 1234,
    "seeded_sampler": True,  # the batch order follows --seed (without it: torch's default order, seed 0)
}


def flags(settings: dict) -> list[str]:
    """``{"max_seq_len": 64, "packing": True, "data_path": [a, b]}`` as argv: True is a bare flag,
    None or False leaves the flag out, a list or tuple gives several values, anything else its ``str``."""
    argv = []
    for name, value in settings.items():
        if value is None or value is False:
            continue
        argv.append(f"--{name}")
        if isinstance(value, (list, tuple)):
            argv += [str(v) for v in value]
        elif value is not True:
            argv.append(str(value))
    return argv


def train_args(model, data, out, **overrides) -> list[str]:
    """``sftlib.train``'s argv: ``model`` fine-tuned on ``data`` (a path, a ``kind=path`` or a list
    to blend), saved to ``out/model`` with its cache in ``out/data_files``.

    The CPU pair (``CPU_TOY``) first, then each keyword names a flag without its dashes (see
    ``flags`` for the values); a keyword that ``CPU_TOY`` also has replaces it in place.
    """
    out = Path(out)
    run = {"model_name_or_path": model, "data_path": data, "data_output_path": out / "data_files",
           "output_dir": out / "model"}
    settings = {**{k: v for k, v in CPU_TOY.items() if k not in overrides}, **overrides}
    return flags({**run, **settings})


def demo_args(model, data, out, **overrides) -> list[str]:
    """``train_args`` at ``make demo``'s settings (``DEMO``), each keyword replacing one of them."""
    return train_args(model, data, out, **{**DEMO, **overrides})


def flag_table(parser, args) -> list[dict]:
    """One row per flag of ``parser`` (``sftlib.arguments.build_parser()``), in ``--help``'s groups and
    order: ``group``, ``flag``, ``default`` (or ``required``) and ``this run`` (``args``' value) written
    as ``--help`` writes defaults, and ``help``. The one source of the meanings is the parser's help text."""
    from sftlib.arguments import shown_default

    rows = []
    for group in parser._action_groups:  # argparse keeps its groups private; --help reads the same lists
        for action in group._group_actions:
            if action.dest != "help":
                rows.append({"group": group.title, "flag": action.option_strings[0],
                             "default": "required" if action.required else shown_default(action.default),
                             "this run": shown_default(getattr(args, action.dest)), "help": action.help})
    return rows
