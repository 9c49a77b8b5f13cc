"""Three ways to get whole weights out of a ZeRO-3 engine, and how to check that they agree.

``sftlib.zero.save_zero_three_model`` gathers one parameter at a time (DeepSpeed-Chat's way);
``gather_whole_model`` gathers them all at once (DeepSpeed's ``GatheredParameters`` on the whole
model); ``sftlib.zero.consolidate_zero_checkpoint`` rebuilds them offline from a checkpoint
(``zero_to_fp32``). ``save_three_ways`` runs all three on one engine and times them.

Explained in notebooks/04_zero3_saving.ipynb.
"""

from __future__ import annotations

import os
import time

from sftlib.constants import is_lora_name
from sftlib.dist import unwrap
from sftlib.zero import consolidate_zero_checkpoint, persistent_buffers, save_zero_three_model, tied_parameter_names


def gather_whole_model(model_ema, global_rank: int, zero_stage: int = 3) -> dict:
    """DeepSpeed's one-shot way: ``GatheredParameters`` on every parameter at once.

    Simple, but every rank then holds the whole model (in the training dtype) for a moment: fine for
    a model that fits one device, out of memory for one that needed ZeRO-3 in the first place.
    """
    import deepspeed

    model = unwrap(model_ema)
    params = [p for p in model.parameters() if zero_stage == 3 and hasattr(p, "ds_id")]
    with deepspeed.zero.GatheredParameters(params, enabled=bool(params)):
        if global_rank != 0:
            return {}
        state = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if not is_lora_name(n)}
    state.update({n: b.detach().cpu().clone() for n, b in persistent_buffers(model) if not is_lora_name(n)})
    return state


def compare_state_dicts(a: dict, b: dict, aliases: dict | None = None) -> float:
    """Largest absolute difference over the keys of ``a``; a key missing from ``b`` raises KeyError.

    ``aliases`` (from ``sftlib.zero.tied_parameter_names``) lets ``b`` hold a tied weight under its
    other name.
    """
    aliases = aliases or {}
    rev = {v: k for k, v in aliases.items()}
    worst = 0.0
    for key, val in a.items():
        other = b[key] if key in b else b[rev[key]] if key in rev else b[aliases[key]]
        if val.shape != other.shape:
            raise ValueError(f"{key}: shape {tuple(val.shape)} != {tuple(other.shape)}")
        worst = max(worst, (val.float() - other.float()).abs().max().item() if val.numel() else 0.0)
    return worst


def save_three_ways(engine, tokenizer, save_dir: str, rank: int) -> dict:
    """Save a ZeRO-3 engine three ways (per-parameter gather, whole-model gather, zero_to_fp32) and
    time each; every rank calls it, rank 0's dict also holds the keys and the differences."""
    import torch.distributed as dist

    t0 = time.time()
    save_zero_three_model(engine, rank, os.path.join(save_dir, "gathered"), 3, tokenizer)
    t1 = time.time()
    whole = gather_whole_model(engine, rank, 3)
    t2 = time.time()
    engine.save_checkpoint(os.path.join(save_dir, "ds_checkpoint"), tag="final")
    dist.barrier()
    out = {"seconds_per_param_gather": t1 - t0, "seconds_whole_gather": t2 - t1}
    if rank == 0:
        from safetensors.torch import load_file

        saved = load_file(os.path.join(save_dir, "gathered", "model.safetensors"))
        t3 = time.time()
        fp32 = consolidate_zero_checkpoint(os.path.join(save_dir, "ds_checkpoint"), tag="final")
        tied = tied_parameter_names(engine)
        out.update(seconds_zero_to_fp32=time.time() - t3, saved_keys=sorted(saved), whole_keys=sorted(whole),
                   zero_to_fp32_keys=sorted(fp32), max_diff_saved_vs_whole=compare_state_dicts(saved, whole),
                   max_diff_saved_vs_zero_to_fp32=compare_state_dicts(saved, fp32, tied), tied=tied)
    return out
