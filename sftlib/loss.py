"""The causal-LM loss from logits, and ``--loss_reduction token``: every label token weighs once.

DeepSpeed-Chat's loss (``--loss_reduction mean``) is the model's own: each micro batch's mean over
its own label tokens; DeepSpeed then divides it by the gradient accumulation steps (GAS) in
``engine.backward`` and averages gradients over the data-parallel ranks (all ZeRO stages, with the
config's ``prescale_gradients: false`` and ``gradient_predivide_factor: 1``). A micro batch with 3
label tokens therefore weighs as much as one with 300.

``token`` counts the label tokens of the whole optimizer step first (the accumulation window's
micro batches on every rank, one all-reduce), then hands ``engine.backward`` each micro batch's
*summed* token loss times ``GAS x ranks / N``, so that after DeepSpeed's own scaling the gradient
is ``sum of every token's loss / N``: the gradient of one big batch, however it is split.

Explained in notebooks/08_same_run_many_ways.ipynb.
"""

from __future__ import annotations

import itertools

import torch
import torch.distributed as dist

from sftlib.constants import IGNORE_INDEX
from sftlib.errors import SFTError

WINDOW_TOKENS = "window_tokens"  # the batch key ``with_window_counts`` adds; popped before the forward pass


def label_token_count(labels: torch.Tensor) -> torch.Tensor:
    """Tokens that are predicted: labels other than -100 once shifted by one (the first position predicts nothing)."""
    return (labels[..., 1:] != IGNORE_INDEX).sum()


def summed_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over predicted tokens of the shifted cross-entropy, in fp32 (labels -100 ignored).

    Divided by ``label_token_count(labels)`` it is the model's own causal-LM loss (transformers'
    ``ForCausalLMLoss``); a batch without label tokens gives 0 with a gradient of zeros.
    """
    shifted = logits[..., :-1, :].float()
    target = labels[..., 1:].to(shifted.device)
    return torch.nn.functional.cross_entropy(shifted.reshape(-1, shifted.size(-1)), target.reshape(-1),
                                             ignore_index=IGNORE_INDEX, reduction="sum")


def window_token_count(micro_batches, device: torch.device) -> torch.Tensor:
    """Label tokens of one optimizer step over every rank, as an int64 tensor on ``device``: this rank's
    micro batches counted on the CPU, then one SUM all-reduce on ``device`` (the engine's: NCCL refuses
    CPU tensors). Nothing waits for the device here.

    Every rank must call it once per step, at the same point, with the micro batches it will train on."""
    local = sum(int(label_token_count(b["labels"])) for b in micro_batches)
    count = torch.tensor(local, dtype=torch.int64).to(device, non_blocking=True)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(count)
    return count


def with_window_counts(batches, engine, device: torch.device):
    """``batches`` again, each carrying (under ``WINDOW_TOKENS``) the label-token count of the optimizer
    step it belongs to: at each step's start the step's micro batches are read ahead and counted
    (``window_token_count``). Steps follow the engine's own accumulation boundaries."""
    gas = engine.gradient_accumulation_steps()
    batches = iter(batches)
    position = engine.micro_steps % gas  # 0 unless a step is open (check_windows keeps steps within an epoch)
    while True:
        window = list(itertools.islice(batches, gas - position))
        if not window:
            return
        count = window_token_count(window, device)
        for batch in window:
            yield {**batch, WINDOW_TOKENS: count}
        position = 0


def check_windows(args, micro_batches_per_epoch: int) -> None:
    """Refuse ``--loss_reduction token`` where an optimizer step would span two epochs: its token count
    is known before its first micro batch, and the next epoch's batches are not read that early."""
    gas = args.gradient_accumulation_steps
    if args.loss_reduction != "token" or args.num_train_epochs == 1 or micro_batches_per_epoch % gas == 0:
        return
    fits = max(d for d in range(1, gas + 1) if micro_batches_per_epoch % d == 0)
    raise SFTError(f"--loss_reduction token with {micro_batches_per_epoch} micro batches per epoch and "
                   f"--gradient_accumulation_steps {gas}: an optimizer step would span two epochs, and a step's "
                   f"label tokens are counted before its first micro batch; pass --gradient_accumulation_steps "
                   f"{fits} (it divides {micro_batches_per_epoch}), --num_train_epochs 1, or --loss_reduction mean")


def deepspeed_divisor(engine) -> int:
    """What DeepSpeed divides a micro batch's loss by before it reaches the weights: GAS (``engine.backward``'s
    ``scale_wrt_gas``) times the data-parallel ranks its gradient all-reduce averages over."""
    return engine.gradient_accumulation_steps() * engine.dp_world_size


def token_weighted_loss(logits: torch.Tensor, labels: torch.Tensor, window_tokens, divisor: int) -> torch.Tensor:
    """The loss to give ``engine.backward`` for one micro batch under ``--loss_reduction token``.

    ``window_tokens`` (an int or a tensor): ``window_token_count`` of the step this micro batch belongs to; ``divisor``:
    ``deepspeed_divisor(engine)``. After DeepSpeed's scaling the gradient is this micro batch's share
    of ``sum of token losses / window_tokens``; the value divided by GAS, averaged over ranks and
    summed over the window, is the step's token-weighted mean loss.
    """
    scale = divisor / torch.as_tensor(window_tokens, device=logits.device).clamp(min=1).double()
    return summed_token_loss(logits, labels) * scale.float()
