"""The optimizer: DeepSpeed-Chat's three parameter groups, and which AdamW runs them.

``get_optimizer_grouped_parameters`` is ``dschat/utils/utils.py``'s (same name and signature; also
importable from ``sftlib.utils``); ``build_optimizer`` is ``main.py``'s choice: DeepSpeedCPUAdam with
``--offload``, FusedAdam on a GPU, torch's AdamW on a CPU, all with betas (0.9, 0.95).

Explained in notebooks/02_utility_functions.ipynb.
"""

from __future__ import annotations

import torch

from sftlib.constants import LORA_PARAM_NAMES

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
    (``accelerator``: ``sftlib.dist.accelerator_name()``)."""
    if args.offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=args.learning_rate, betas=BETAS)
    if accelerator == "cpu":
        return torch.optim.AdamW(groups, lr=args.learning_rate, betas=BETAS)
    from deepspeed.ops.adam import FusedAdam

    return FusedAdam(groups, lr=args.learning_rate, betas=BETAS)
