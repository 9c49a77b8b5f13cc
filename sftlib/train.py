"""DeepSpeed-Chat step 1: supervised fine-tuning on a real DeepSpeed engine.

The flow and argument names of ``training/step1_supervised_finetuning/main.py``; sftlib adds
``--dtype fp32`` (what a CPU should use) and fails early, in one line, on bad input. Run it::

    python -m sftlib.train --model_name_or_path toy_world/opt-tiny --data_path toy_world/data \\
        --dtype fp32 --output_dir outputs/sft                     # one process, one rank
    deepspeed --num_gpus 2 --module sftlib.train ... --zero_stage 3   # N ranks (CPU or GPU)

or from Python: ``sftlib.train.main(["--model_name_or_path", ...])`` returns the run's history.

Explained in notebooks/05_main_training_loop.ipynb.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import socket
import sys
import tempfile
import time

import torch

from sftlib.utils import SFTError

DTYPES = ("fp16", "bf16", "fp32")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def parse_args(argv=None) -> argparse.Namespace:
    """DeepSpeed-Chat's step-1 arguments, with their defaults, plus DeepSpeed's own."""
    import deepspeed

    p = argparse.ArgumentParser(description="Finetune a transformers model on a causal language modeling task")
    p.add_argument("--data_path", nargs="*", default=["Dahoas/rm-static"],
                   help="datasets, blended; a local folder with train.json/eval.json works offline")
    p.add_argument("--data_split", type=str, default="2,4,4",
                   help="proportions of each dataset for phases 1/2/3; SFT uses the first part")
    p.add_argument("--sft_only_data_path", nargs="*", default=[], help="single-response sets, phase 1 only")
    p.add_argument("--data_output_path", type=str, default="/tmp/data_files/",
                   help="cache of split indices and tokenized sets; must be node-local")
    p.add_argument("--model_name_or_path", type=str, required=True, help="hub id or local model folder")
    p.add_argument("--per_device_train_batch_size", type=int, default=16)
    p.add_argument("--per_device_eval_batch_size", type=int, default=16)
    p.add_argument("--max_seq_len", type=int, default=512, help="pad-to and truncate-at length")
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--num_train_epochs", type=int, default=1)
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    p.add_argument("--lr_scheduler_type", type=str, default="cosine",
                   choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                            "constant_with_warmup"])
    p.add_argument("--num_warmup_steps", type=int, default=0)
    p.add_argument("--output_dir", type=str, default=None, help="where to save; nothing is saved when unset")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--local_rank", type=int, default=-1, help="set by the launcher")
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--dropout", type=float, default=None, help="overrides every dropout key of the config")
    p.add_argument("--offload", action="store_true", help="ZeRO offload to CPU (DeepSpeedCPUAdam)")
    p.add_argument("--dtype", type=str, default="fp16", choices=DTYPES,
                   help="fp16 or bf16 as in DeepSpeed-Chat; fp32 added for CPUs")
    p.add_argument("--zero_stage", type=int, default=0)
    p.add_argument("--lora_dim", type=int, default=0, help="LoRA rank; > 0 enables LoRA")
    p.add_argument("--lora_module_name", type=str, default="decoder.layers.")
    p.add_argument("--only_optimize_lora", action="store_true")
    p.add_argument("--lora_learning_rate", type=float, default=5e-4)
    p.add_argument("--compute_fp32_loss", action="store_true")
    p.add_argument("--enable_tensorboard", action="store_true")
    p.add_argument("--tensorboard_path", type=str, default="step1_tensorboard")
    p.add_argument("--add_eot_token", action="store_true")
    p.add_argument("--eot_token", type=str, default="<|endoftext|>")
    p.add_argument("--print_loss", action="store_true", help="every rank prints its micro-step loss")
    p.add_argument("--deepspeed_log_level", type=str, default=None, choices=["debug", "info", "warning", "error"],
                   help="info brings back DeepSpeed's step= and throughput lines (2023 releases printed them)")
    # sftlib additions (off by default, so a plain run behaves like the original)
    p.add_argument("--reshuffle_each_epoch", action="store_true",
                   help="call sampler.set_epoch so each epoch sees a new order (the original repeats one order)")
    p.add_argument("--save_steps", type=int, default=0, help="write a DeepSpeed checkpoint every N optimizer steps")
    p.add_argument("--save_total_limit", type=int, default=None, help="keep only the newest N checkpoints")
    p.add_argument("--checkpoint_dir", type=str, default=None, help="default: <output_dir>_checkpoints")
    p.add_argument("--resume_from_checkpoint", type=str, default=None,
                   help="a checkpoint folder (newest complete step) or one global_stepN inside it")
    p.add_argument("--mask_prompt", action="store_true",
                   help="loss on the response only (the original also trains on the prompt)")
    p.add_argument("--dynamic_padding", action="store_true",
                   help="pad each batch to its longest sample (a multiple of 8), not to --max_seq_len")
    p.add_argument("--packing", action="store_true",
                   help="pack several samples per --max_seq_len row; attention stays within each sample")
    p.add_argument("--data_weights", type=float, nargs="*", default=None,
                   help="blend --data_path sets by these weights (default: in proportion to their sizes)")
    p = deepspeed.add_config_arguments(p)
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------
# Checks and set-up
# --------------------------------------------------------------------------------------------

def accelerator_name() -> str:
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name()


def validate_args(args) -> None:
    """Everything that can be checked before any work; each failure is one line naming the fix."""
    from sftlib.utils import check_writable

    if args.dtype == "fp16" and accelerator_name() == "cpu":
        raise SFTError("--dtype fp16 does not exist on a CPU (DeepSpeed refuses it); "
                       "use --dtype fp32 (bf16 works but is ~13x slower on AVX2 CPUs)")
    if args.num_train_epochs <= 0:
        raise SFTError(f"--num_train_epochs must be at least 1 (got {args.num_train_epochs})")
    for flag in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, flag) <= 0:
            raise SFTError(f"--{flag} must be a positive integer (got {getattr(args, flag)})")
    if args.save_steps and args.save_steps > 0 and not (args.output_dir or args.checkpoint_dir):
        raise SFTError("--save_steps needs --output_dir or --checkpoint_dir to know where checkpoints go")
    if args.resume_from_checkpoint and not os.path.exists(args.resume_from_checkpoint):
        raise SFTError(f"--resume_from_checkpoint {args.resume_from_checkpoint}: no such folder")
    if getattr(args, "deepspeed_config", None):
        raise SFTError("--deepspeed_config is not read: like DeepSpeed-Chat, sftlib builds the DeepSpeed config from "
                       "its own flags (train_batch_size = per_device_train_batch_size x gradient_accumulation_steps "
                       "x world size, so it always divides); pass those flags instead")
    if args.only_optimize_lora and args.lora_dim <= 0:
        raise SFTError("--only_optimize_lora needs --lora_dim > 0, otherwise nothing would train")
    name = str(args.model_name_or_path)
    if not os.path.isdir(name) and (os.path.exists(name) or not HUB_ID.match(name)):
        raise SFTError(f"--model_name_or_path {name}: no such model folder")
    for path in list(args.data_path) + list(args.sft_only_data_path):
        if not os.path.exists(path) and (os.sep in path.strip("/") and path.startswith((".", "/", "~"))):
            raise SFTError(f"--data_path {path}: no such file or folder")
    if args.output_dir is not None:
        check_writable(args.output_dir)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> None:
    """Join the launcher's process group, or make a one-rank group for ``python -m``/notebooks."""
    import deepspeed
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if "RANK" not in os.environ:
        # One rank: a file rendezvous cannot collide with another process's port, as TCP can.
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
        store = os.path.join(tempfile.gettempdir(), f"sftlib-rendezvous-{os.getpid()}-{time.time_ns()}")
        from deepspeed.accelerator import get_accelerator

        backend = get_accelerator().communication_backend_name()
        dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1)
    deepspeed.init_distributed()


def build_optimizer(args, groups):
    """DeepSpeedCPUAdam with offload, FusedAdam on GPUs, torch AdamW on a CPU (all AdamW, betas 0.9/0.95)."""
    if args.offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=args.learning_rate, betas=(0.9, 0.95))
    if accelerator_name() == "cpu":
        return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(0.9, 0.95))
    from deepspeed.ops.adam import FusedAdam

    return FusedAdam(groups, lr=args.learning_rate, betas=(0.9, 0.95))


def evaluation(model, eval_dataloader, device) -> tuple[float, float, float]:
    """Perplexity two ways: DeepSpeed-Chat's and weighted by tokens.

    The original averages per-batch mean losses (a short batch counts as much as a long one), then
    averages over ranks and takes ``exp``. The token-weighted value is ``exp`` of the total loss
    over all predicted tokens divided by their count, over all ranks. Returns
    ``(ppl, loss, ppl_token_weighted)``.
    """
    import torch.distributed as dist

    from sftlib.utils import get_all_reduce_mean, to_device

    model.eval()
    losses = torch.zeros((), device=device)
    token_sums = torch.zeros(2, dtype=torch.float64, device=device)  # summed token loss, token count
    step = 0
    for step, batch in enumerate(eval_dataloader):
        batch = to_device(batch, device)
        with torch.no_grad():
            loss = model(**batch).loss.float()
        losses += loss
        tokens = (batch["labels"][:, 1:] != -100).sum()
        token_sums += torch.stack([loss.double() * tokens, tokens.double()])
    losses = get_all_reduce_mean(losses / (step + 1))
    if dist.is_initialized():
        dist.all_reduce(token_sums)
    perplexity = math.exp(min(losses.item(), 700.0))
    ppl_tokens = math.exp(min((token_sums[0] / token_sums[1].clamp(min=1)).item(), 700.0))
    model.train()
    return perplexity, losses.item(), ppl_tokens


def _tensorboard_writer(args):
    """A SummaryWriter under ``--tensorboard_path`` (rank 0 only), or None when disabled."""
    if not args.enable_tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(os.path.join(args.tensorboard_path, "sftlib"))


def _fmt_rate(x: float) -> str:
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


# --------------------------------------------------------------------------------------------
# main()
# --------------------------------------------------------------------------------------------

def main(args=None) -> dict:
    """Run step 1 and return its history (losses, learning rates, perplexities, output folder)."""
    import deepspeed
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, get_scheduler

    from sftlib import checkpoint, collate, data, lora, utils, zero
    from sftlib import model as model_utils
    from sftlib.ds_config import get_train_ds_config
    from sftlib.perf import StepMeter

    if not isinstance(args, argparse.Namespace):
        args = parse_args(args)
    validate_args(args)
    init_distributed()
    world, rank = dist.get_world_size(), dist.get_rank()
    args.local_rank = utils.local_rank()
    if accelerator_name() == "cpu":
        device = torch.device("cpu")
    else:
        get_accelerator().set_device(args.local_rank)
        device = torch.device(get_accelerator().device_name(), args.local_rank)
    t_start = time.time()

    ds_config = get_train_ds_config(offload=args.offload, dtype=args.dtype, stage=args.zero_stage,
                                    enable_tensorboard=args.enable_tensorboard,
                                    tb_path=args.tensorboard_path, tb_name="step1_model",
                                    log_level=getattr(args, "deepspeed_log_level", None))
    ds_config["train_micro_batch_size_per_gpu"] = args.per_device_train_batch_size
    ds_config["train_batch_size"] = args.per_device_train_batch_size * world * args.gradient_accumulation_steps

    utils.set_random_seed(args.seed)
    dist.barrier()

    extra_tokens = args.eot_token if args.add_eot_token else None
    tokenizer = model_utils.load_hf_tokenizer(args.model_name_or_path, fast_tokenizer=True,
                                              add_special_tokens=extra_tokens)
    model = model_utils.create_hf_model(AutoModelForCausalLM, args.model_name_or_path, tokenizer,
                                        ds_config, dropout=args.dropout)
    if args.compute_fp32_loss:
        model_utils.causal_lm_model_to_fp32_loss(model)
    if args.lora_dim > 0:
        model = lora.convert_linear_layer_to_lora(model, args.lora_module_name, args.lora_dim)
        if args.only_optimize_lora:
            model = lora.only_optimize_lora_parameters(model)
            model = lora.make_model_gradient_checkpointing_compatible(model)

    train_dataset, eval_dataset = data.create_prompt_dataset(
        args.local_rank, args.data_path, args.data_split, args.data_output_path, 1, args.seed, tokenizer,
        args.max_seq_len, end_of_conversation_token=tokenizer.eos_token,
        sft_only_data_path=args.sft_only_data_path, blend_weights=args.data_weights or None,
        mask_prompt=args.mask_prompt, pad_to_max_len=not (args.dynamic_padding or args.packing))
    if len(train_dataset) == 0:
        raise SFTError(f"the training set is empty after --data_split {args.data_split}; give phase 1 a share")
    batching = "packing" if args.packing else "dynamic" if args.dynamic_padding else "compat"
    if args.packing:  # several samples per row; eval stays unpacked (dynamic padding)
        train_dataset = collate.PackedDataset(train_dataset, args.max_seq_len)
    eval_collate = collate.make_collator("dynamic" if batching != "compat" else "compat", tokenizer.pad_token_id)
    mask_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.dtype, torch.float32)  # packing's 4-D mask
    train_dataloader = DataLoader(train_dataset, collate_fn=collate.make_collator(batching, tokenizer.pad_token_id,
                                                                                  dtype=mask_dtype),
                                  sampler=DistributedSampler(train_dataset, seed=args.seed),
                                  batch_size=args.per_device_train_batch_size)
    eval_dataloader = DataLoader(eval_dataset, collate_fn=eval_collate,
                                 sampler=DistributedSampler(eval_dataset, shuffle=False),
                                 batch_size=args.per_device_eval_batch_size)

    groups = utils.get_optimizer_grouped_parameters(model, args.weight_decay, args.lora_learning_rate)
    optimizer = build_optimizer(args, groups)
    updates_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    lr_scheduler = get_scheduler(name=args.lr_scheduler_type, optimizer=optimizer,
                                 num_warmup_steps=args.num_warmup_steps,
                                 num_training_steps=args.num_train_epochs * updates_per_epoch)
    model, optimizer, _, lr_scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, args=args, config=ds_config, lr_scheduler=lr_scheduler,
        dist_init_required=True)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()

    history = {"step": [], "loss": [], "lr": [], "tokens_per_s": [], "eval": [], "world_size": world,
               "train_samples": len(train_dataset), "eval_samples": len(eval_dataset)}
    ckpt_dir, meta = checkpoint.default_dir(args), checkpoint.meta_of(args, world)
    start_epoch, skip_batches, rng_state = 0, 0, None
    if args.resume_from_checkpoint:
        resume_dir, tag, saved = checkpoint.resolve(args.resume_from_checkpoint, meta)
        rng_state = checkpoint.load(model, resume_dir, tag)
        start_epoch, skip_batches, history = saved["epoch"], saved["step_in_epoch"], saved["history"]
        utils.print_rank_0(f"resumed from {resume_dir / tag}: epoch {start_epoch + 1}, "
                           f"micro batch {skip_batches}, global step {model.global_steps}")
    writer = _tensorboard_writer(args) if rank == 0 else None

    def evaluate(epoch):
        utils.print_rank_0(f"***** Evaluating perplexity, Epoch {epoch}/{args.num_train_epochs} *****")
        ppl, loss, ppl_tokens = evaluation(model, eval_dataloader, device)
        utils.print_rank_0(f"ppl: {ppl}, loss: {loss}")
        utils.print_rank_0(f"token-weighted ppl: {ppl_tokens}")
        history["eval"].append({"epoch": epoch, "ppl": ppl, "loss": loss, "ppl_token_weighted": ppl_tokens})
        if writer:
            writer.add_scalar("eval/ppl", ppl, model.global_steps)
            writer.add_scalar("eval/ppl_token_weighted", ppl_tokens, model.global_steps)

    utils.print_rank_0("***** Running training *****")
    if not args.resume_from_checkpoint:
        evaluate(0)
    for epoch in range(start_epoch, args.num_train_epochs):
        utils.print_rank_0(f"Beginning of Epoch {epoch + 1}/{args.num_train_epochs}, "
                           f"Total Micro Batches {len(train_dataloader)}")
        if args.reshuffle_each_epoch:
            train_dataloader.sampler.set_epoch(epoch)
        model.train()
        batches = iter(train_dataloader)
        first = skip_batches if epoch == start_epoch else 0
        for _ in range(first):  # resume: the micro batches this epoch already trained on
            next(batches)
        if rng_state is not None and epoch == start_epoch:
            checkpoint.restore_rng(rng_state)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{args.num_train_epochs}", initial=first,
                   total=len(train_dataloader), disable=rank != 0, leave=False, file=sys.stdout)
        acc_loss, acc_tokens, t0 = 0.0, 0, time.time()
        meter = StepMeter(model, args.gradient_checkpointing, world)  # samples/s and TFLOPs per device
        for step, batch in enumerate(bar, start=first):
            batch = utils.to_device(batch, device)
            n_tokens = collate.pop_token_count(batch)  # the packing collator's count leaves the batch here
            loss = model(**batch, use_cache=False).loss
            if args.print_loss:
                print(f"Epoch: {epoch}, Step: {step}, Rank: {rank}, loss = {loss}", flush=True)
            model.backward(loss)
            model.step()
            acc_loss += loss.item() / args.gradient_accumulation_steps
            acc_tokens += n_tokens
            meter.add(batch)  # StepMeter counts packed rows' samples from their position_ids
            if (step + 1) % args.gradient_accumulation_steps:
                continue
            stats = utils.get_all_reduce_mean(torch.tensor([acc_loss, acc_tokens], dtype=torch.float64))
            tok_s = float(stats[1]) * world / max(time.time() - t0, 1e-9)
            lr = lr_scheduler.get_last_lr()[0]
            history["step"].append(model.global_steps)
            history["loss"].append(float(stats[0]))
            history["lr"].append(lr)
            history["tokens_per_s"].append(tok_s)
            rates = meter.line()
            if rank == 0:
                bar.write(f"step {model.global_steps} | loss {float(stats[0]):.4f} | "
                          f"{_fmt_rate(tok_s)} tok/s | {rates} | lr {lr:.1e}")
            if writer:
                for key, value in (("loss", float(stats[0])), ("lr", lr), ("tokens_per_s", tok_s)):
                    writer.add_scalar(f"train/{key}", value, model.global_steps)
            if args.save_steps > 0 and model.global_steps % args.save_steps == 0:
                position = {"epoch": epoch, "step_in_epoch": step + 1}
                tag = checkpoint.save(model, ckpt_dir, position, history, meta, args.save_total_limit)
                utils.print_rank_0(f"checkpoint {tag} saved to {ckpt_dir}")
            acc_loss, acc_tokens, t0 = 0.0, 0, time.time()
        evaluate(epoch + 1)
        model.tput_timer.update_epoch_count()
    if writer:
        writer.close()

    history["train_seconds"] = time.time() - t_start
    if args.output_dir is not None:
        utils.print_rank_0("saving the final model ...")
        model = lora.convert_lora_to_linear_layer(model)
        if args.zero_stage == 3:
            zero.save_zero_three_model(model, rank, args.output_dir, zero_stage=3, tokenizer=tokenizer)
        elif rank == 0:
            utils.save_hf_format(model, tokenizer, args)
        if rank == 0:
            with open(os.path.join(args.output_dir, "training_history.json"), "w") as f:
                json.dump(history, f, indent=1)
        dist.barrier()  # every rank returns only once the saved folder is complete
        history["output_dir"] = args.output_dir
        utils.print_rank_0(f"saved to {args.output_dir}")
    model.module.sftlib_hf_ds_config = None  # end ZeRO-3 loading mode for later models in this process
    return history


def cli(argv=None) -> None:
    """Entry point: a user error prints ``error: ...`` once and exits 2."""
    try:
        main(argv)
    except SFTError as err:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
