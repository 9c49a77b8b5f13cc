"""What a training run records: its typed history, and where each record is also written.

``History`` is what ``sftlib.train.main`` returns and what ``training_history.json`` and every
checkpoint hold. ``Reporter`` writes each record once: the nanoGPT-style log line on rank 0, and
TensorBoard scalars under ``--tensorboard_path`` when ``--enable_tensorboard`` is on.
``MovingAverage`` and ``ExponentialMovingAverage`` smooth a series of records.

Explained in notebooks/05_main_training_loop.ipynb.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field


@dataclass
class History:
    """One entry per optimizer step (``step``, ``loss``, ``lr``, ``tokens_per_s``) and per evaluation.

    ``eval`` holds ``{"epoch", "ppl", "loss", "ppl_token_weighted"}`` dicts, epoch 0 being before
    training. ``history["loss"]`` reads like the json file it is saved as.
    """

    world_size: int = 1
    train_samples: int = 0
    eval_samples: int = 0
    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)
    eval: list[dict] = field(default_factory=list)
    train_seconds: float | None = None
    output_dir: str | None = None

    def __getitem__(self, key: str):
        return getattr(self, key)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> "History":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in known})


def _fmt_rate(x: float) -> str:
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


class Reporter:
    """Records into a ``History`` and writes each record out (log line, TensorBoard) on rank 0."""

    def __init__(self, history: History, rank: int, tensorboard_path: str | None = None):
        self.history, self.rank = history, rank
        self.writer = None
        if tensorboard_path is not None and rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(tensorboard_path, "sftlib"))

    def step(self, step: int, loss: float, lr: float, tokens_per_s: float, rates: str, write=print) -> None:
        """One optimizer step: ``step 12 | loss 0.4120 | 1.9k tok/s | 95.6 samples/s | ... | lr 3.0e-04``."""
        h = self.history
        h.step.append(step)
        h.loss.append(loss)
        h.lr.append(lr)
        h.tokens_per_s.append(tokens_per_s)
        if self.rank == 0:
            write(f"step {step} | loss {loss:.4f} | {_fmt_rate(tokens_per_s)} tok/s | {rates} | lr {lr:.1e}")
        if self.writer:
            for key, value in (("loss", loss), ("lr", lr), ("tokens_per_s", tokens_per_s)):
                self.writer.add_scalar(f"train/{key}", value, step)

    def evaluation(self, epoch: int, step: int, ppl: float, loss: float, ppl_tokens: float) -> None:
        """One evaluation, printed as DeepSpeed-Chat prints it (``ppl: ..., loss: ...``)."""
        if self.rank == 0:
            print(f"ppl: {ppl}, loss: {loss}", flush=True)
            print(f"token-weighted ppl: {ppl_tokens}", flush=True)
        self.history.eval.append({"epoch": epoch, "ppl": ppl, "loss": loss, "ppl_token_weighted": ppl_tokens})
        if self.writer:
            self.writer.add_scalar("eval/ppl", ppl, step)
            self.writer.add_scalar("eval/ppl_token_weighted", ppl_tokens, step)

    def close(self) -> None:
        if self.writer:
            self.writer.close()


# --------------------------------------------------------------------------------------------
# Smoothing a record: DeepSpeed-Chat's two moving averages (dschat/utils/utils.py; its steps 2 and 3
# smooth their reward logs with them; also importable from sftlib.utils)
# --------------------------------------------------------------------------------------------

class MovingAverage:
    """Arithmetic mean of every value seen so far."""

    def __init__(self):
        self.count, self.total, self.mean = 0, 0.0, 0.0

    def update(self, num: float) -> float:
        self.total += num
        self.count += 1
        self.mean = self.total / self.count
        return self.mean


class ExponentialMovingAverage:
    """``ema = alpha * ema + (1 - alpha) * x``, starting at the first value."""

    def __init__(self, alpha: float = 0.9):
        self.alpha, self.ema = alpha, None

    def update(self, num: float) -> float:
        self.ema = num if self.ema is None else self.alpha * self.ema + (1 - self.alpha) * num
        return self.ema

    def get(self) -> float:
        return self.ema if self.ema is not None else 0.0
