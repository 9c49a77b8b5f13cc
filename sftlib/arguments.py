"""The command line of ``python -m sftlib.train``: DeepSpeed-Chat's arguments and every check made
before any work (``train.parse_args`` and ``train.validate_args`` are these).

``validate_args`` runs on every rank before the process group exists and reads only what the user
gave: numbers against their ranges, flags that contradict each other, the model folder (config and
readable weights), every local data file (read once per node, by its local rank 0, row by row: a bad
byte or row is reported with its file and line) and the output folders. Each failure is one
``SFTError`` line naming the fix. It returns the checked data, which the build takes as it is.

Explained in notebooks/05_main_training_loop.ipynb.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from sftlib.data.check import check_data_paths, check_data_weights, print_notes
from sftlib.data.prompt_dataset import check_labels_2023
from sftlib.data.splits import parse_data_split
from sftlib.dist import accelerator_name, local_rank
from sftlib.errors import SFTError
from sftlib.model import check_model_folder
from sftlib.utils import check_writable

DTYPES = ("fp16", "bf16", "fp32")
TB_CHILDREN = ("ds_tensorboard_logs", "sftlib")  # what --enable_tensorboard writes under --tensorboard_path


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are sftlib's one line (``error: ...``, exit 2), not usage plus a message."""

    def error(self, message):
        raise SFTError(message)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's default after its help, as one would type it (lists space-separated, switches off/on)."""

    def _get_help_string(self, action):
        if action.required or action.default is argparse.SUPPRESS:
            return action.help if not action.required else f"{action.help} (required)"
        return f"{action.help} (default: {str(shown_default(action.default)).replace('%', '%%')})"


def shown_default(default):
    """A default as ``--help`` shows it: ``off``/``on`` for switches, ``unset`` for None, lists space-separated."""
    if isinstance(default, bool):
        return "on" if default else "off"
    if default is None:
        return "unset"
    if isinstance(default, (list, tuple)):
        return " ".join(map(str, default)) or "none"
    return default


PROG = "python -m sftlib.train"
DS_TIMEOUT_MINUTES = int(os.getenv("DEEPSPEED_TIMEOUT", default=10))  # deepspeed.constants.default_pg_timeout's


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m sftlib.train``: DeepSpeed-Chat's step-1 flags with their defaults,
    sftlib's additions (all off by default) and DeepSpeed's own config flags.

    Building it imports no DeepSpeed (so ``--help`` prints no accelerator warning); every flag has a
    help text and its default (notebook 05 renders its argument table from this parser)."""
    p = _Parser(prog=PROG, formatter_class=_Formatter, usage="%(prog)s --model_name_or_path MODEL [options]",
                description="Finetune a transformers model on a causal language modeling task "
                            "(DeepSpeed-Chat step 1, supervised fine-tuning).",
                epilog="example: python -m sftlib.train --model_name_or_path toy_world/opt-tiny "
                       "--data_path toy_world/data --dtype fp32 --output_dir outputs/sft")
    _data_flags(p.add_argument_group("data"))
    _model_flags(p.add_argument_group("model and LoRA"))
    _training_flags(p.add_argument_group("training"))
    _output_flags(p.add_argument_group("output and logging"))
    _sftlib_flags(p.add_argument_group("sftlib additions", "off by default, so a plain run behaves like "
                                                           "DeepSpeed-Chat's"))
    _deepspeed_flags(p.add_argument_group("DeepSpeed", "deepspeed.add_config_arguments' flags"))
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """DeepSpeed-Chat's step-1 arguments, with their defaults, plus DeepSpeed's own (``build_parser``)."""
    return build_parser().parse_args(argv)


def _data_flags(g) -> None:
    g.add_argument("--data_path", nargs="*", default=["Dahoas/rm-static"],
                   help="datasets, blended: registered names (Dahoas/rm-static), NAME=/local/path, a local folder "
                        "with train.json/eval.json, or messages=PATH for chats (see data_cards/README.md)")
    g.add_argument("--data_split", type=str, default="2,4,4",
                   help="proportions of each dataset for phases 1/2/3 (SFT, reward model, RLHF); SFT uses the first "
                        "part, so give 10,0,0 to train on all rows")
    g.add_argument("--sft_only_data_path", nargs="*", default=[],
                   help="single-response sets used by phase 1 only, whole (no split)")
    g.add_argument("--data_output_path", type=str, default="/tmp/data_files/",
                   help="cache of split indices and tokenized sets; must be node-local (built by each node's local "
                        "rank 0)")
    g.add_argument("--max_seq_len", type=int, default=512,
                   help="tokens per sample: longer samples are truncated (and, unless --dynamic_padding or "
                        "--packing, shorter ones padded to it)")
    g.add_argument("--add_eot_token", action="store_true",
                   help="add --eot_token to the tokenizer as a special token")
    g.add_argument("--eot_token", type=str, default="<|endoftext|>", help="the end-of-text token --add_eot_token adds")


def _model_flags(g) -> None:
    g.add_argument("--model_name_or_path", type=str, required=True,
                   help="the model to fine-tune: a local model folder or a Hugging Face hub id")
    g.add_argument("--dropout", type=float, default=None,
                   help="sets every dropout probability of the model's config; unset keeps the config's own")
    g.add_argument("--lora_dim", type=int, default=0, help="LoRA rank; > 0 enables LoRA, 0 trains the full model")
    g.add_argument("--lora_module_name", type=str, default="decoder.layers.",
                   help="LoRA replaces the linear layers whose names contain this")
    g.add_argument("--only_optimize_lora", action="store_true",
                   help="train the LoRA weights only (the base weights frozen); needs --lora_dim > 0")
    g.add_argument("--lora_learning_rate", type=float, default=5e-4, help="learning rate of the LoRA weights")
    g.add_argument("--compute_fp32_loss", action="store_true",
                   help="compute the loss on fp32 logits (steadier with fp16/bf16)")


def _training_flags(g) -> None:
    g.add_argument("--per_device_train_batch_size", type=int, default=16,
                   help="training samples per rank per micro step")
    g.add_argument("--per_device_eval_batch_size", type=int, default=16, help="evaluation samples per rank per batch")
    g.add_argument("--learning_rate", type=float, default=1e-3,
                   help="peak learning rate (AdamW, betas 0.9/0.95) of the weights LoRA does not cover")
    g.add_argument("--weight_decay", type=float, default=0.0,
                   help="AdamW weight decay (biases and norm weights get none)")
    g.add_argument("--num_train_epochs", type=int, default=1, help="passes over the training set")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1,
                   help="micro steps per optimizer step (global batch = per-device batch x this x ranks)")
    g.add_argument("--lr_scheduler_type", type=str, default="cosine",
                   choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                            "constant_with_warmup"], help="learning-rate schedule (transformers.get_scheduler)")
    g.add_argument("--num_warmup_steps", type=int, default=0, help="optimizer steps of linear warmup")
    g.add_argument("--seed", type=int, default=1234,
                   help="seeds the data splits and blend, and Python, numpy and torch (LoRA's initial weights)")
    g.add_argument("--local_rank", type=int, default=-1, help="set by the launcher; leave it alone")
    g.add_argument("--gradient_checkpointing", action="store_true",
                   help="recompute activations in the backward pass (less memory, more compute)")
    g.add_argument("--offload", action="store_true",
                   help="ZeRO-Offload: optimizer states and step on the CPU (DeepSpeedCPUAdam), and with stage 3 "
                        "the parameters too; needs --zero_stage 1, 2 or 3")
    g.add_argument("--dtype", type=str, default="fp16", choices=DTYPES,
                   help="training precision: fp16 or bf16 as in DeepSpeed-Chat; fp32 added for CPUs")
    g.add_argument("--zero_stage", type=int, default=0,
                   help="ZeRO stage: 0 off, 1 optimizer states, 2 + gradients, 3 + parameters partitioned over ranks")


def _output_flags(g) -> None:
    g.add_argument("--output_dir", type=str, default=None,
                   help="where the fine-tuned model is saved (Hugging Face format); nothing is saved when unset")
    g.add_argument("--enable_tensorboard", action="store_true", help="write TensorBoard logs")
    g.add_argument("--tensorboard_path", type=str, default="step1_tensorboard", help="where TensorBoard logs go")
    g.add_argument("--print_loss", action="store_true", help="every rank prints its micro-step loss")
    g.add_argument("--deepspeed_log_level", type=str, default=None, choices=["debug", "info", "warning", "error"],
                   help="DeepSpeed's log level: info brings back its step= and throughput lines (2023 releases "
                        "printed them); unset keeps DeepSpeed's default")


def _sftlib_flags(g) -> None:
    g.add_argument("--seeded_sampler", action="store_true",
                   help="train order seeded by --seed, eval unshuffled (the original: torch's defaults, seed 0, "
                        "both shuffled)")
    g.add_argument("--reshuffle_each_epoch", action="store_true",
                   help="call sampler.set_epoch so each epoch sees a new order (the original repeats one order)")
    g.add_argument("--data_cache_timeout", type=float, default=7200.0,
                   help="seconds a rank waits for its node's local rank 0 to build the dataset cache")
    g.add_argument("--dist_timeout", type=float, default=float(DS_TIMEOUT_MINUTES),
                   help="minutes a rank may wait in one collective (e.g. a barrier while rank 0 saves the model) "
                        "before the process group's watchdog ends the job; the default is DeepSpeed's (its "
                        "DEEPSPEED_TIMEOUT variable, else 10)")
    g.add_argument("--save_steps", type=int, default=0,
                   help="write a DeepSpeed checkpoint every N optimizer steps (0: none)")
    g.add_argument("--save_total_limit", type=int, default=None,
                   help="keep only the newest N checkpoints; unset keeps all")
    g.add_argument("--checkpoint_dir", type=str, default=None,
                   help="where checkpoints go; unset: <output_dir>_checkpoints")
    g.add_argument("--resume_from_checkpoint", type=str, default=None,
                   help="a checkpoint folder (its newest complete step) or one global_stepN inside it")
    g.add_argument("--labels_2023", action="store_true",
                   help="labels = input_ids, padding trained on (the 2023 code's labels)")
    g.add_argument("--mask_prompt", action="store_true",
                   help="loss on the response only (the original also trains on the prompt)")
    g.add_argument("--dynamic_padding", action="store_true",
                   help="pad each batch to its longest sample (a multiple of 8), not to --max_seq_len")
    g.add_argument("--packing", nargs="?", const="auto", default=None,
                   choices=("auto", "mask", "padding_free", "flatten"),
                   help="pack several samples per --max_seq_len row; attention stays within each sample. "
                        "auto (bare --packing): padding-free where the model's attention allows, else a 4-D mask")
    g.add_argument("--data_weights", type=float, nargs="*", default=None,
                   help="blend --data_path sets by these weights, one per entry; unset: in proportion to their sizes")
    g.add_argument("--loss_reduction", type=str, default="mean", choices=("mean", "token"),
                   help="mean: each micro batch's loss is the mean over its own label tokens (DeepSpeed-Chat's); "
                        "token: every label token of the global batch (all accumulation steps, all ranks) "
                        "weighs the same")
    g.add_argument("--chat_template", type=str, default=None,
                   help="a Jinja chat template FILE for messages data (replaces the tokenizer's; saved with it)")


def _deepspeed_flags(g) -> None:
    """The flags ``deepspeed.add_config_arguments`` adds, with its names and defaults (a test compares them),
    declared here so that building the parser needs no DeepSpeed import."""
    g.add_argument("--deepspeed", action="store_true", help="accepted for launchers; DeepSpeed is always used")
    g.add_argument("--deepspeed_config", type=str, default=None,
                   help="refused: sftlib builds the DeepSpeed config from its own flags, as DeepSpeed-Chat does")
    g.add_argument("--deepscale", action="store_true", help="DeepSpeed's deprecated --deepspeed")
    g.add_argument("--deepscale_config", type=str, default=None, help="DeepSpeed's deprecated --deepspeed_config")


# (flag, lowest allowed, highest allowed or None, what the range means); None values are skipped
RANGES = [
    ("per_device_train_batch_size", 1, None, "a positive integer"),
    ("per_device_eval_batch_size", 1, None, "a positive integer"),
    ("gradient_accumulation_steps", 1, None, "a positive integer"),
    ("num_train_epochs", 1, None, "at least 1"),
    ("max_seq_len", 2, None, "at least 2 (a prompt token and the token it predicts)"),
    ("learning_rate", 0.0, None, "a positive number"),
    ("lora_learning_rate", 0.0, None, "a positive number"),
    ("weight_decay", 0.0, None, "0 or more"),
    ("num_warmup_steps", 0, None, "0 or more"),
    ("seed", 0, 2**32 - 1, "between 0 and 2**32 - 1 (numpy's seed range)"),
    ("zero_stage", 0, 3, "0, 1, 2 or 3"),
    ("lora_dim", 0, None, "0 (no LoRA) or a positive rank"),
    ("dropout", 0.0, 1.0, "a probability in [0, 1)"),
    ("save_steps", 0, None, "0 (no checkpoints) or a positive number of optimizer steps"),
    ("save_total_limit", 1, None, "at least 1"),
    ("data_cache_timeout", 0.0, None, "a positive number of seconds"),
    ("dist_timeout", 0.0, 7 * 24 * 60, "a positive number of minutes, at most 10080 (a week)"),
    ("local_rank", -1, None, "-1 or more (the launcher sets it)"),
]
STRICT = {"learning_rate", "lora_learning_rate", "data_cache_timeout", "dist_timeout", "dropout"}  # lr > 0, dropout < 1


def batching_mode(args) -> str:
    """The one answer to "how are rows batched": ``packing``, ``dynamic`` (pad to the batch's longest)
    or ``compat`` (pad every sample to --max_seq_len, DeepSpeed-Chat's)."""
    return "packing" if args.packing else "dynamic" if args.dynamic_padding else "compat"


def validate_args(args):
    """Everything that can be checked before any work; each failure is one line naming the fix.
    Returns the checked data (``check_data``), for ``create_prompt_dataset(checked_data=...)``."""
    check_numbers(args)
    check_combinations(args)
    check_model_folder(args.model_name_or_path, args.max_seq_len)
    checked_data = check_data(args)
    check_outputs(args)
    return checked_data


def check_numbers(args) -> None:
    """Every numeric flag within its range (and finite), and the blend weights (``check_data_weights``)."""
    for flag, low, high, meaning in RANGES:
        value = getattr(args, flag, None)
        if value is None:
            continue
        bad = not math.isfinite(value) or value < low or (high is not None and value > high)
        if flag in STRICT:
            bad = bad or value == (low if flag != "dropout" else high)
        if bad:
            raise SFTError(f"--{flag} must be {meaning} (got {value})")
    check_data_weights(args.data_weights, len(args.data_path))


def check_combinations(args) -> None:
    """Flags that contradict each other or need another flag."""
    if args.dtype == "fp16" and accelerator_name() == "cpu":
        raise SFTError("--dtype fp16 is not for a CPU (sftlib refuses it there; DeepSpeed's CPU accelerator has "
                       "fp16 only with oneDNN's fp16 kernels); use --dtype fp32 (bf16 works; without AVX-512 BF16 or "
                       "AMX it is emulated, ~13x slower)")
    if args.offload and args.zero_stage == 0:
        raise SFTError("--offload moves ZeRO's optimizer to the CPU (DeepSpeedCPUAdam), and --zero_stage 0 has no ZeRO "
                       "optimizer: the parameters stay on the accelerator, where CPU Adam refuses them at the first "
                       "step; pass --zero_stage 1, 2 or 3 with --offload")
    if getattr(args, "deepspeed_config", None):
        raise SFTError("--deepspeed_config is not read: like DeepSpeed-Chat, sftlib builds the DeepSpeed config from "
                       "its own flags (train_batch_size = per_device_train_batch_size x gradient_accumulation_steps "
                       "x world size, so it always divides); pass those flags instead")
    if args.only_optimize_lora and args.lora_dim <= 0:
        raise SFTError("--only_optimize_lora needs --lora_dim > 0, otherwise nothing would train")
    if args.packing and args.dynamic_padding:
        raise SFTError("--packing and --dynamic_padding exclude each other (packing already pads each batch to its "
                       "longest row); pass one")
    check_labels_2023(args.labels_2023, args.mask_prompt, batching_mode(args))
    if args.save_steps > 0 and not (args.output_dir or args.checkpoint_dir):
        raise SFTError("--save_steps needs --output_dir or --checkpoint_dir to know where checkpoints go")
    if args.save_total_limit is not None and args.save_steps <= 0:
        raise SFTError("--save_total_limit keeps the newest checkpoints of --save_steps; pass --save_steps N too")
    if args.chat_template and not os.path.isfile(args.chat_template):
        raise SFTError(f"--chat_template {args.chat_template}: no such file; give a Jinja chat template file")
    if args.add_eot_token and not args.eot_token.strip():
        raise SFTError("--add_eot_token needs a non-empty --eot_token")
    parse_data_split(args.data_split)


def check_data(args):
    """Every --data_path/--sft_only_data_path entry resolves; the node's local rank 0 (the process that
    builds its cache) reads every local file once, row by row, and phase 1 must get train and eval rows
    (``sftlib.data.check_data_paths``). Returns the ``CheckedData``; rank 0 prints its notes."""
    checked_data = check_data_paths(args.data_path, args.sft_only_data_path, args.data_split, train_phase=1,
                                    read=local_rank() == 0)
    print_notes(checked_data)
    return checked_data


def output_children(args) -> set[str]:
    """Names inside --output_dir that this run itself writes (TensorBoard logs, checkpoints): the final
    save writes the model files beside them and never touches them."""
    if args.output_dir is None:
        return set()
    out = Path(args.output_dir).absolute()
    inside = []
    if args.enable_tensorboard:
        inside += [Path(args.tensorboard_path).absolute() / c for c in TB_CHILDREN]
    from sftlib.checkpoint import default_dir

    ckpt = default_dir(args)
    if ckpt and (args.save_steps > 0 or args.resume_from_checkpoint):
        inside.append(Path(ckpt).absolute())
    if args.resume_from_checkpoint:
        inside.append(Path(args.resume_from_checkpoint).absolute())
    return {p.relative_to(out).parts[0] for p in inside if p != out and p.is_relative_to(out)}


def check_outputs(args) -> None:
    """Decided before any training: the output folder can take the model, and this run's log and
    checkpoint folders do not collide with it."""
    if args.resume_from_checkpoint and not os.path.exists(args.resume_from_checkpoint):
        raise SFTError(f"--resume_from_checkpoint {args.resume_from_checkpoint}: no such folder")
    if args.output_dir is None:
        return
    out = Path(args.output_dir).absolute()
    from sftlib.checkpoint import default_dir

    ckpt = default_dir(args)
    if ckpt and args.save_steps > 0 and (out == Path(ckpt).absolute() or out.is_relative_to(Path(ckpt).absolute())):
        raise SFTError(f"--output_dir {args.output_dir} is (inside) the checkpoint folder {ckpt}; "
                       "keep the model folder apart, e.g. --checkpoint_dir <output_dir>/checkpoints")
    if args.enable_tensorboard:
        for child in TB_CHILDREN:
            logs = Path(args.tensorboard_path).absolute() / child
            if out == logs or out.is_relative_to(logs):
                raise SFTError(f"--output_dir {args.output_dir} is inside TensorBoard's {logs}; pick another folder")
    check_writable(args.output_dir, allow=output_children(args))
