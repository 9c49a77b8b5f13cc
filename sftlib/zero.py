"""Saving a ZeRO-3 model that no single rank holds whole (DeepSpeed-Chat's ``save_zero_three_model``).

Explained in notebooks/04_zero3_saving.ipynb.
"""

from __future__ import annotations

import torch

from sftlib.utils import write_hf_folder


def gather_state_dict(model_ema, global_rank: int, zero_stage: int = 3) -> dict:
    """Every non-LoRA parameter and buffer as a CPU tensor on rank 0 (empty dict elsewhere).

    Under ZeRO-3 each parameter is gathered in turn, so peak memory is one parameter, not the model.
    """
    import deepspeed

    model = model_ema.module if hasattr(model_ema, "module") else model_ema
    state = {}
    for name, param in model.named_parameters():
        with deepspeed.zero.GatheredParameters([param], enabled=zero_stage == 3 and hasattr(param, "ds_id")):
            if global_rank == 0 and "lora" not in name:
                state[name] = param.detach().cpu().clone()
    if global_rank == 0:
        for name, buf in model.named_buffers():
            if "lora" not in name and name in model.state_dict():
                state[name] = buf.detach().cpu().clone()
    return state


def save_zero_three_model(model_ema, global_rank: int, save_dir: str, zero_stage: int = 0,
                          tokenizer=None) -> None:
    """All ranks call this; rank 0 writes an HF folder (safetensors, config, tokenizer) atomically."""
    state = gather_state_dict(model_ema, global_rank, zero_stage)
    if global_rank == 0:
        model = model_ema.module if hasattr(model_ema, "module") else model_ema
        write_hf_folder(model, state, tokenizer, save_dir)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()

