"""DeepSpeed-Chat step 1: supervised fine-tuning on a real DeepSpeed engine.

The flow and argument names of ``training/step1_supervised_finetuning/main.py``; sftlib adds
``--dtype fp32`` (what a CPU should use) and fails early, in one line, on bad input. Run it::

    python -m sftlib.train --model_name_or_path toy_world/opt-tiny --data_path toy_world/data \\
        --dtype fp32 --output_dir outputs/sft                     # one process, one rank
    deepspeed --num_gpus 2 --module sftlib.train ... --zero_stage 3   # N ranks (CPU or GPU)

or from Python: ``sftlib.train.main(["--model_name_or_path", ...])`` returns the run's ``History``.

``main()`` reads top to bottom as the original's: set up the ranks and the DeepSpeed config, build
the model, the dataloaders and the engine, then evaluate, train one epoch and evaluate again, per
epoch, and save. Each step is a function here, so notebook 05 calls the very same steps.

Explained in notebooks/05_main_training_loop.ipynb.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

from sftlib import checkpoint, cli, collate, lora, optim, rng, save, utils, zero
from sftlib import loss as losses
from sftlib import model as model_utils
from sftlib.arguments import batching_mode, output_children, parse_args, validate_args
from sftlib.constants import IGNORE_INDEX
from sftlib.data.messages import load_chat_template
from sftlib.dist import RankContext, accelerator_name, all_ranks, init_distributed
from sftlib.errors import SFTError
from sftlib.history import History, Reporter
from sftlib.perf import rate_line
from sftlib.state import Run, TrainState, initial_state
from sftlib.utils import print_rank_0

# --------------------------------------------------------------------------------------------
# The steps of main(), in the order it runs them
# --------------------------------------------------------------------------------------------

def setup_distributed(args) -> RankContext:
    """Join the process group (or make a one-rank one); returns this rank's ``RankContext``
    (global and local rank, world size, device)."""
    ctx = init_distributed(timedelta(minutes=args.dist_timeout))
    args.local_rank = ctx.local_rank  # build_dataloaders reads it (DeepSpeed's engine sets it again, engine.py 1968)
    return ctx


def build_ds_config(args) -> dict:
    """DeepSpeed-Chat's training config, with the batch sizes this run's flags and world size give, and
    DeepSpeed's node-local checkpoints when each node has its own copy of the checkpoint folder."""
    from sftlib.ds_config import get_train_ds_config

    ds_config = get_train_ds_config(offload=args.offload, dtype=args.dtype, stage=args.zero_stage,
                                    enable_tensorboard=args.enable_tensorboard,
                                    tb_path=args.tensorboard_path, tb_name="step1_model",
                                    log_level=getattr(args, "deepspeed_log_level", None))
    ds_config["train_micro_batch_size_per_gpu"] = args.per_device_train_batch_size
    ds_config["train_batch_size"] = (args.per_device_train_batch_size * dist.get_world_size()
                                     * args.gradient_accumulation_steps)
    ckpt_dir = checkpoint.default_dir(args)
    if args.save_steps > 0 and ckpt_dir and cli.on_every_rank(
            lambda: save.checkpoints_are_node_local(ckpt_dir, args.local_rank)):
        ds_config["checkpoint"] = {"use_node_local_storage": True}  # each node's local rank 0 writes (engine.py 1909)
    return ds_config


def build_model(args, ds_config: dict):
    """The tokenizer and the model (ZeRO-3-partitioned while loading when the config says so), LoRA applied."""
    from transformers import AutoModelForCausalLM

    extra_tokens = args.eot_token if args.add_eot_token else None
    tokenizer = model_utils.load_hf_tokenizer(args.model_name_or_path, fast_tokenizer=True,
                                              add_special_tokens=extra_tokens)
    if args.chat_template:  # messages data: render chats with this template (saved with the tokenizer)
        load_chat_template(tokenizer, args.chat_template)
    model = model_utils.create_hf_model(AutoModelForCausalLM, args.model_name_or_path, tokenizer,
                                        ds_config, dropout=args.dropout)
    if args.compute_fp32_loss:
        model_utils.causal_lm_model_to_fp32_loss(model)
    if args.lora_dim > 0:
        model = lora.convert_linear_layer_to_lora(model, args.lora_module_name, args.lora_dim)
        if args.only_optimize_lora:
            model = lora.only_optimize_lora_parameters(model)
            model = lora.make_model_gradient_checkpointing_compatible(model)
    return tokenizer, model


def build_dataloaders(args, tokenizer, checked_data=None):
    """Phase-1 train and eval dataloaders: each rank reads its share through a ``DistributedSampler``
    (torch's defaults, as DeepSpeed-Chat; ``--seeded_sampler`` seeds training and leaves eval unshuffled).
    ``checked_data`` (what ``validate_args`` read) lets the build skip reading the files again."""
    from torch.utils.data import DataLoader

    from sftlib.data import create_prompt_dataset

    run_id = all_ranks(f"{os.getpid()}-{time.time_ns()}")[0]  # ties a cache builder's failure to this job
    train_dataset, eval_dataset = create_prompt_dataset(
        args.local_rank, args.data_path, args.data_split, args.data_output_path, 1, args.seed, tokenizer,
        args.max_seq_len, end_of_conversation_token=tokenizer.eos_token, sft_only_data_path=args.sft_only_data_path,
        data_weights=args.data_weights, mask_prompt=args.mask_prompt, batching=batching_mode(args),
        labels_2023=args.labels_2023, wait_timeout=args.data_cache_timeout, run_id=run_id,
        checked_data=checked_data)
    batching, packing = batching_mode(args), "mask"
    if batching == "packing":  # several samples per row, laid out as the model's attention allows; eval stays unpacked
        train_dataset = collate.PackedDataset(train_dataset, args.max_seq_len)
        packing = collate.packing_mode(args.packing, model_utils.load_config(args.model_name_or_path))
    train_sampler, eval_sampler = samplers(args, train_dataset, eval_dataset)
    mask_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.dtype, torch.float32)  # packing's mask
    pin = accelerator_name() == "cuda"  # page-locked batches copy to the GPU without waiting for it
    train_dataloader = DataLoader(train_dataset, batch_size=args.per_device_train_batch_size,
                                  collate_fn=collate.make_collator(batching, tokenizer.pad_token_id, dtype=mask_dtype,
                                                                   packing=packing),
                                  sampler=train_sampler, pin_memory=pin)
    eval_collate = collate.make_collator("dynamic" if batching != "compat" else "compat", tokenizer.pad_token_id)
    eval_dataloader = DataLoader(eval_dataset, batch_size=args.per_device_eval_batch_size, collate_fn=eval_collate,
                                 sampler=eval_sampler, pin_memory=pin)
    losses.check_windows(args, len(train_dataloader))  # --loss_reduction token: no step across two epochs
    return train_dataloader, eval_dataloader


def samplers(args, train_dataset, eval_dataset):
    """DeepSpeed-Chat's samplers (torch's defaults: seed 0, both shuffled), or with --seeded_sampler
    the train order following --seed and eval in file order."""
    from torch.utils.data.distributed import DistributedSampler

    if args.seeded_sampler:
        return DistributedSampler(train_dataset, seed=args.seed), DistributedSampler(eval_dataset, shuffle=False)
    return DistributedSampler(train_dataset), DistributedSampler(eval_dataset)


def build_engine(args, model, ds_config: dict, train_dataloader):
    """Optimizer groups, optimizer and scheduler, wrapped by ``deepspeed.initialize``; returns (engine, scheduler)."""
    import deepspeed
    from transformers import get_scheduler

    groups = optim.get_optimizer_grouped_parameters(model, args.weight_decay, args.lora_learning_rate)
    optimizer = optim.build_optimizer(args, groups, accelerator_name())
    updates_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    lr_scheduler = get_scheduler(name=args.lr_scheduler_type, optimizer=optimizer,
                                 num_warmup_steps=args.num_warmup_steps,
                                 num_training_steps=args.num_train_epochs * updates_per_epoch)
    engine, _, _, lr_scheduler = deepspeed.initialize(model=model, optimizer=optimizer, args=args, config=ds_config,
                                                      lr_scheduler=lr_scheduler, dist_init_required=False)
    if args.gradient_checkpointing:
        engine.gradient_checkpointing_enable()
    return engine, lr_scheduler


def evaluation(model, eval_dataloader, device) -> tuple[float, float, float]:
    """Perplexity two ways: DeepSpeed-Chat's and weighted by tokens.

    The original averages per-batch mean losses (a short batch counts as much as a long one), then
    averages over ranks and takes ``exp``. The token-weighted value is ``exp`` of the total loss
    over all predicted tokens divided by their count, over all ranks. Returns
    ``(ppl, loss, ppl_token_weighted)``.
    """
    model.eval()
    losses = torch.zeros((), device=device)
    token_sums = torch.zeros(2, dtype=torch.float64, device=device)  # summed token loss, token count
    step = 0
    for step, batch in enumerate(eval_dataloader):
        batch = utils.to_device(batch, device, non_blocking=True)
        with torch.no_grad():
            loss = model(**batch).loss.float()
        losses += loss
        tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
        token_sums += torch.stack([loss.double() * tokens, tokens.double()])
    losses = utils.get_all_reduce_mean(losses / (step + 1))
    if dist.is_initialized():
        dist.all_reduce(token_sums)
    perplexity = math.exp(min(losses.item(), 700.0))
    ppl_tokens = math.exp(min((token_sums[0] / token_sums[1].clamp(min=1)).item(), 700.0))
    model.train()
    return perplexity, losses.item(), ppl_tokens


# --------------------------------------------------------------------------------------------
# The training loop: its steps work with a Run and move a TrainState (sftlib.state)
# --------------------------------------------------------------------------------------------

def evaluate(run: Run, epoch: int) -> None:
    """Evaluate and record, with DeepSpeed-Chat's log line."""
    print_rank_0(f"***** Evaluating perplexity, Epoch {epoch}/{run.args.num_train_epochs} *****")
    ppl, loss, ppl_tokens = evaluation(run.engine, run.eval_dataloader, run.device)
    run.reporter.evaluation(epoch, run.engine.global_steps, ppl, loss, ppl_tokens)


def train_one_epoch(run: Run, state: TrainState) -> None:
    """The epoch ``state`` stands in, from where it stands: ``micro_step`` per micro batch, and
    ``finish_step`` (log line, maybe a checkpoint) at each of DeepSpeed's accumulation boundaries,
    which run on across epochs: with a batch count that is not a multiple of
    --gradient_accumulation_steps a step spans two epochs, and ``state`` carries it over. Every rate
    of a log line is timed over that step's micro batches only, never an evaluation or a save."""
    print_rank_0(f"Beginning of Epoch {state.epoch + 1}/{run.args.num_train_epochs}, "
                 f"Total Micro Batches {len(run.train_dataloader)}")
    bar = progress_bar(run, state, epoch_batches(run, state))
    state.meter.resume()  # paused at the end of the last epoch: the evaluation in between is in no step's time
    token = run.args.loss_reduction == "token"  # each step's label tokens counted before its first micro batch
    for batch in losses.with_window_counts(bar, run.engine, run.device) if token else bar:
        if micro_step(run, state, batch):
            finish_step(run, state, bar.write)
    state.meter.pause()


def epoch_batches(run: Run, state: TrainState) -> Iterator[dict]:
    """This epoch's batches from where ``state`` stands: the sampler set to the epoch (with
    --reshuffle_each_epoch), a resume's trained micro batches skipped, then its RNG states restored."""
    if run.args.reshuffle_each_epoch:
        run.train_dataloader.sampler.set_epoch(state.epoch)
    run.engine.train()
    batches = iter(run.train_dataloader)
    for _ in range(state.step_in_epoch):  # resume: the micro batches this epoch already trained on
        next(batches)
    if state.rng_state is not None:
        rng.restore_rng(state.rng_state)
        state.rng_state = None
    return batches


def progress_bar(run: Run, state: TrainState, batches: Iterator[dict]):
    """A tqdm bar over ``batches`` on rank 0, drawn on a terminal only (tqdm's ``disable=None``: off
    when stdout is a notebook, a pipe or a file, so a log holds the step lines alone)."""
    from tqdm import tqdm

    return tqdm(batches, desc=f"epoch {state.epoch + 1}/{run.args.num_train_epochs}", initial=state.step_in_epoch,
                total=len(run.train_dataloader), disable=True if dist.get_rank() != 0 else None, leave=False,
                file=sys.stdout)


def micro_step(run: Run, state: TrainState, batch: dict) -> bool:
    """Forward, ``engine.backward`` and ``engine.step`` on one micro batch; True when it ended an
    optimizer step. Nothing here waits for the device: the token count and the meter read the batch
    before it moves (asynchronously), and the loss adds up on the device."""
    n_tokens = collate.pop_token_count(batch)  # the packing collator's count leaves the batch here
    state.meter.add(batch, n_tokens)  # StepMeter counts packed rows' samples from their position_ids
    engine = run.engine
    loss = forward_loss(run, batch)
    if run.args.print_loss:
        print(f"Epoch: {state.epoch}, Step: {state.step_in_epoch}, Rank: {dist.get_rank()}, loss = {loss}", flush=True)
    engine.backward(loss)
    boundary = engine.is_gradient_accumulation_boundary()  # asked before step(), which counts the micro step
    engine.step()
    state.step_loss += loss.detach().double() / run.args.gradient_accumulation_steps
    state.step_in_epoch += 1
    return boundary


def forward_loss(run: Run, batch: dict) -> torch.Tensor:
    """The micro batch's loss for ``engine.backward``: the model's own (``--loss_reduction mean``,
    DeepSpeed-Chat's), or under ``token`` its summed token loss scaled so that the step's gradient is
    that of (sum of token losses) / (label tokens of the step on every rank); see ``sftlib.loss``."""
    window_tokens = batch.pop(losses.WINDOW_TOKENS, None)
    batch = utils.to_device(batch, run.device, non_blocking=True)
    if window_tokens is None:
        return run.engine(**batch, use_cache=False).loss
    labels = batch.pop("labels")
    logits = run.engine(**batch, use_cache=False).logits
    return losses.token_weighted_loss(logits, labels, window_tokens, losses.deepspeed_divisor(run.engine))


def finish_step(run: Run, state: TrainState, write) -> None:
    """End an optimizer step: its rates, one all-reduce of loss and rates (the step's one wait for
    the device), the log line, a checkpoint every --save_steps; then the next step's span starts."""
    rates = state.meter.report()  # this step's span ends here, before any collective, print or save
    loss, tokens_per_s, rates["samples_per_s"] = step_means(state.step_loss, rates, run.device)
    run.reporter.step(run.engine.global_steps, loss, run.lr_scheduler.get_last_lr()[0], tokens_per_s,
                      rate_line(rates), write=write)
    if run.args.save_steps > 0 and run.engine.global_steps % run.args.save_steps == 0:
        save_checkpoint(run.args, run.engine, state)
    state.step_loss = torch.zeros_like(state.step_loss)
    state.meter.reset()  # the next step's span starts after the log line and the checkpoint


def step_means(step_loss: torch.Tensor, rates: dict, device) -> list[float]:
    """A step's loss, tokens/s and samples/s, each averaged over the ranks: one all-reduce (on the
    engine's device: NCCL refuses CPU tensors), one copy back to the host."""
    local = torch.tensor([rates["tokens_per_s"], rates["samples_per_s"]], dtype=torch.float64)
    stats = torch.cat([step_loss.reshape(1), local.to(device, non_blocking=True)])
    return utils.get_all_reduce_mean(stats).tolist()


def save_checkpoint(args, engine, state: TrainState) -> None:
    """A resumable checkpoint (DeepSpeed's, plus position, RNG states and history) in the checkpoint folder."""
    ckpt_dir, meta = checkpoint.default_dir(args), checkpoint.meta_of(args, dist.get_world_size())
    tag = save.save_checkpoint(engine, ckpt_dir, state.position(), state.history.to_dict(), meta, args.save_total_limit)
    print_rank_0(f"checkpoint {tag} saved to {ckpt_dir}")


def final_saver(args):
    """How the final model is written: gathered from every rank under ZeRO-3 (DeepSpeed-Chat's
    ``save_zero_three_model``), else rank 0's own whole copy."""
    if args.zero_stage == 3:
        return functools.partial(zero.save_zero_three_model, zero_stage=3)
    return save.save_on_rank_0


def save_model(args, engine, tokenizer, history: History, saver=None) -> None:
    """LoRA fused into the weights, then one Hugging Face folder with ``training_history.json``, written
    by ``saver`` (``final_saver(args)`` unless given; ``sftlib.save.save_final`` says what one is).

    Log and checkpoint folders of this run inside ``--output_dir`` stay as they are, the model files
    beside them. If the save fails anyway (a full disk, a folder changed during training), the
    weights go to a rescue folder beside it and the error says where."""
    print_rank_0("saving the final model ...")
    engine = lora.convert_lora_to_linear_layer(engine)
    saver = saver or final_saver(args)
    history.output_dir = args.output_dir
    problem = save.save_final(engine, tokenizer, history.to_dict(), args.output_dir, saver, output_children(args))
    failure = next((p for p in all_ranks(problem) if p), None)
    if failure is not None:
        rescue = all_ranks(str(save.rescue_dir(args.output_dir)))[0]
        history.output_dir = rescue
        problem = save.save_final(engine, tokenizer, history.to_dict(), rescue, saver)
        again = next((p for p in all_ranks(problem) if p), None)
        where = f"the trained weights are in {rescue}" if again is None else f"the rescue save failed too ({again})"
        err = SFTError(f"the final save to {args.output_dir} failed ({failure}); {where}")
        raise cli.known_everywhere(err)  # every rank saw the failure: rank 0 says it once
    print_rank_0(f"saved to {args.output_dir}")


def main(args=None, saver=None) -> History:
    """Run step 1 and return its history (losses, learning rates, perplexities, output folder).

    ``saver``: what writes the final model (see ``save_model``), for a lesson that measures around it."""
    if not isinstance(args, argparse.Namespace):
        args = parse_args(args)
    checked = []  # what validation read, for the build (each local file parsed once per node)
    invalid = cli.attempt(lambda: checked.append(validate_args(args)))  # every rank checks alone, before any work
    ctx = setup_distributed(args)
    device = ctx.device
    cli.agree(invalid)  # then all ranks stop together if any rank's input is bad
    t_start = time.time()
    ds_config = build_ds_config(args)
    utils.set_random_seed(args.seed)
    dist.barrier()

    tokenizer, model = build_model(args, ds_config)
    train_dataloader, eval_dataloader = cli.on_every_rank(lambda: build_dataloaders(args, tokenizer,
                                                                                  checked[0] if checked else None))
    engine, lr_scheduler = build_engine(args, model, ds_config, train_dataloader)
    state = initial_state(args, engine, train_dataloader, eval_dataloader, device)
    reporter = Reporter(state.history, dist.get_rank(), args.tensorboard_path if args.enable_tensorboard else None)
    run = Run(args, engine, lr_scheduler, train_dataloader, eval_dataloader, device, reporter)

    print_rank_0("***** Running training *****")
    if not args.resume_from_checkpoint:
        evaluate(run, epoch=0)
    while state.epoch < args.num_train_epochs:
        train_one_epoch(run, state)
        evaluate(run, epoch=state.epoch + 1)
        engine.tput_timer.update_epoch_count()
        state.next_epoch()
    reporter.close()

    state.history.train_seconds = time.time() - t_start
    if args.output_dir is not None:
        save_model(args, engine, tokenizer, state.history, saver)
    return state.history


if __name__ == "__main__":
    cli.run(main)
