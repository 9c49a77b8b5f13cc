"""The training loop's two objects: what its steps work with (``Run``) and where it stands (``TrainState``).

``sftlib.train``'s loop steps (``train_one_epoch``, ``micro_step``, ``finish_step``...) take these two
and nothing else that changes; a checkpoint saves a ``TrainState``'s position and history, a resume
restores them. torchtune's recipe state is the model.

Explained in notebooks/05_main_training_loop.ipynb.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import torch

from sftlib.history import History, Reporter
from sftlib.perf import StepMeter


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
