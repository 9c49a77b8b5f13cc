"""The training loop's two objects: what its steps work with (``Run``) and where it stands (``TrainState``).

``sftlib.train``'s loop steps (``train_one_epoch``, ``micro_step``, ``finish_step``...) take these two
and nothing else that changes; a checkpoint saves a ``TrainState``'s position and history, and
``initial_state`` starts one fresh or from ``--resume_from_checkpoint``. torchtune's recipe state is
the model.

Explained in notebooks/05_main_training_loop.ipynb.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from sftlib import checkpoint, cli
from sftlib.history import History, Reporter
from sftlib.perf import StepMeter
from sftlib.utils import print_rank_0


@dataclass(frozen=True)
class Run:
    """What the loop's steps work with, fixed from ``build_engine`` to ``save_model``."""

    args: argparse.Namespace
    engine: Any  # the DeepSpeed engine
    lr_scheduler: Any
    train_dataloader: Any
    eval_dataloader: Any
    device: torch.device
    reporter: Reporter  # records into the TrainState's history


@dataclass
class TrainState:
    """Where training stands, in one object: what a checkpoint saves, a resume restores, and the
    optimizer step still accumulating, which may span two epochs.

    ``epoch`` counts from 0; ``step_in_epoch``: micro batches of that epoch already trained (a resume
    skips them); ``step_loss``: the open optimizer step's loss so far (its micro batches' losses / GAS),
    a tensor on the device so that no micro step waits for it; ``meter`` counts and times that step;
    ``rng_state``: a resume's generator states, restored before its first batch."""

    history: History
    meter: StepMeter
    step_loss: torch.Tensor
    epoch: int = 0
    step_in_epoch: int = 0
    rng_state: dict | None = None

    def position(self) -> dict:
        """What a checkpoint records of where training stands."""
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch}

    def next_epoch(self) -> None:
        """The next epoch, from its first micro batch."""
        self.epoch, self.step_in_epoch = self.epoch + 1, 0


def initial_state(args, engine, train_dataloader, eval_dataloader, device) -> TrainState:
    """A fresh run's state, or the one ``--resume_from_checkpoint`` saved."""
    meter = StepMeter(engine, args.gradient_checkpointing, dist.get_world_size())  # samples/s, tokens/s, TFLOPs
    meter.pause()  # its clock runs during training steps only
    history = History(world_size=dist.get_world_size(), train_samples=len(train_dataloader.dataset),
                      eval_samples=len(eval_dataloader.dataset))
    state = TrainState(history, meter, torch.zeros((), dtype=torch.float64, device=device))
    if args.resume_from_checkpoint:
        resume(args, engine, state)
    return state


def resume(args, engine, state: TrainState) -> None:
    """Load ``--resume_from_checkpoint`` into ``engine`` and ``state`` (history, position, this rank's RNG
    states). Each stage ends with the ranks agreeing, so a rank whose copy is damaged stops them all,
    before DeepSpeed reads anything; every rank resumes from the same tag."""
    meta = checkpoint.meta_of(args, dist.get_world_size())
    resume_dir, tag, saved = cli.on_every_rank(lambda: checkpoint.resolve(args.resume_from_checkpoint, meta))
    cli.on_every_rank(lambda: checkpoint.same_on_every_rank(resume_dir, tag))
    state.rng_state = cli.on_every_rank(lambda: checkpoint.load(engine, resume_dir, tag))
    state.history, state.epoch, state.step_in_epoch = History.from_dict(saved["history"]), saved["epoch"], \
        saved["step_in_epoch"]
    print_rank_0(f"resumed from {resume_dir / tag}: epoch {state.epoch + 1}, "
                 f"micro batch {state.step_in_epoch}, global step {engine.global_steps}")
