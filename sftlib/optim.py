"""The optimizer: DeepSpeed-Chat's three parameter groups, and which AdamW runs them.

``get_optimizer_grouped_parameters`` is ``dschat/utils/utils.py``'s (same name and signature; also
importable from ``sftlib.utils``); ``build_optimizer`` is ``main.py``'s choice: DeepSpeedCPUAdam with
``--offload``, FusedAdam on a GPU, torch's AdamW on a CPU, all with betas (0.9, 0.95).

Explained in notebooks/02_utility_functions.ipynb.
"""

from __future__ import annotations

import torch

from sftlib.constants import LORA_PARAM_NAMES
from sftlib.dist import is_rank_0

NO_DECAY = ["bias", "layer_norm.weight", "layernorm.weight", "norm.weight", "ln_f.weight"]
BETAS = (0.9, 0.95)


def _has(name: str, substrings) -> bool:
    return any(s.lower() in name.lower() for s in substrings)


def get_optimizer_grouped_parameters(model, weight_decay: float, lora_lr: float = 5e-4,
                                     no_decay_name_list=NO_DECAY, lora_name_list=LORA_PARAM_NAMES):
    """DeepSpeed-Chat's three parameter groups, matched by case-insensitive substring of the name.

    1. decayed, non-LoRA parameters (``weight_decay``); 2. LoRA parameters (``weight_decay`` and
    their own ``lr = lora_lr``); 3. parameters whose name contains a ``no_decay`` entry: biases and
    norm weights (weight decay 0). Frozen parameters are left out; empty groups are dropped (a
    parameter-less group would make the optimizer fail).
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in trainable if not _has(n, no_decay_name_list) and not _has(n, lora_name_list)],
         "weight_decay": weight_decay},
        {"params": [p for n, p in trainable if not _has(n, no_decay_name_list) and _has(n, lora_name_list)],
         "weight_decay": weight_decay, "lr": lora_lr},
        {"params": [p for n, p in trainable if _has(n, no_decay_name_list)], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def describe_optimizer_groups(model, groups, base_lr: float | None = None) -> list[dict]:
    """One row per parameter of ``model``: its group, weight decay and learning rate.

    Frozen parameters appear with group ``None`` (no optimizer sees them). ``base_lr`` fills in the
    learning rate of groups without their own ``lr``. Feed the rows to ``pandas.DataFrame``.
    """
    where = {id(p): i for i, g in enumerate(groups) for p in g["params"]}
    rows = []
    for name, p in model.named_parameters():
        i = where.get(id(p))
        g = groups[i] if i is not None else {}
        rows.append({"name": name, "group": i, "shape": tuple(p.shape), "numel": p.numel(),
                     "weight_decay": g.get("weight_decay"), "lr": g.get("lr", base_lr if g else None)})
    return rows


def build_optimizer(args, groups, accelerator: str):
    """DeepSpeedCPUAdam with ``--offload``, FusedAdam on an accelerator, torch AdamW on a CPU
    (``accelerator``: ``sftlib.dist.accelerator_name()``). FusedAdam's op is compiled with nvcc on
    first use (the wheel ships none); where it cannot be built, ``torch_adamw`` runs instead."""
    if args.offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=args.learning_rate, betas=BETAS)
    if accelerator == "cpu":
        return torch.optim.AdamW(groups, lr=args.learning_rate, betas=BETAS)
    try:
        return fused_adam(groups, args.learning_rate)
    except _op_build_errors() as err:  # evaluated only when the build failed
        optimizer, kind = torch_adamw(groups, args.learning_rate)
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:200]
        if is_rank_0():
            print(f"FusedAdam's CUDA op cannot be built here ({reason}); training with {kind} instead", flush=True)
        return optimizer


def fused_adam(groups, lr: float):
    """DeepSpeed's FusedAdam, which builds (or loads) its CUDA op as it is made."""
    from deepspeed.ops.adam import FusedAdam

    return FusedAdam(groups, lr=lr, betas=BETAS)


def _op_build_errors() -> tuple[type[BaseException], ...]:
    """What DeepSpeed's op builder raises when an op cannot be compiled: no CUDA toolkit, a toolkit
    whose major version is not torch's CUDA's (``op_builder/builder.py``), no ninja or a failed build
    (``RuntimeError``), a compiler that cannot run (``OSError``, ``CalledProcessError``)."""
    import subprocess

    from deepspeed.ops.op_builder.builder import CUDAMismatchException, MissingCUDAException

    return (MissingCUDAException, CUDAMismatchException, RuntimeError, OSError, ImportError,
            subprocess.CalledProcessError)


def torch_adamw(groups, lr: float) -> tuple[torch.optim.Optimizer, str]:
    """The fastest torch AdamW these parameters allow: fused (one kernel for every tensor), else foreach;
    returns it and its name for the log line."""
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=BETAS, fused=True), "torch.optim.AdamW(fused=True)"
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(groups, lr=lr, betas=BETAS, foreach=True), "torch.optim.AdamW(foreach=True)"
