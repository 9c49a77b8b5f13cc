"""ZeRO-3: saving a model that no single rank holds whole.

DeepSpeed-Chat's ``save_zero_three_model`` (``dschat/utils/utils.py``) with what it lacks: buffers,
tied weights, an atomic write and a Hugging Face folder; and DeepSpeed's offline way back to whole
weights, ``zero_to_fp32`` on a checkpoint. Nothing here reads an environment variable: a lesson
that pauses a save or records partition sizes brings its own objects (``sftlib.lessons``).

Explained in notebooks/04_zero3_saving.ipynb.
"""

from __future__ import annotations

import torch

from sftlib.constants import is_lora_name
from sftlib.dist import unwrap
from sftlib.save import remove_stale_temporaries, write_hf_folder

# --------------------------------------------------------------------------------------------
# Gathering
# --------------------------------------------------------------------------------------------


def tied_parameter_names(model) -> dict[str, str]:
    """``{alias: first name}`` for every parameter reachable under more than one name (tied weights)."""
    first, aliases = {}, {}
    for name, param in unwrap(model).named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases


def persistent_buffers(model):
    """``(name, buffer)`` for buffers that belong in a state dict (``persistent=False`` ones do not)."""
    for mod_name, module in unwrap(model).named_modules():
        for name, buf in module.named_buffers(recurse=False):
            if buf is not None and name not in module._non_persistent_buffers_set:
                yield (f"{mod_name}.{name}" if mod_name else name), buf


def gather_state_dict(model_ema, global_rank: int, zero_stage: int = 3) -> dict:
    """Every non-LoRA parameter and persistent buffer as a CPU tensor on rank 0 (empty dict elsewhere).

    All ranks must call it. Under ZeRO-3 each parameter is gathered in turn, so the extra memory is
    one whole parameter, never the whole model. A tied weight is stored once, under its first name
    (``save_pretrained`` and ``from_pretrained`` re-tie it). Buffers are never partitioned by ZeRO,
    so rank 0 copies its own.
    """
    import deepspeed

    model = unwrap(model_ema)
    state = {}
    for name, param in model.named_parameters():  # each tied parameter once
        partitioned = zero_stage == 3 and hasattr(param, "ds_id")
        with deepspeed.zero.GatheredParameters([param], enabled=partitioned):
            if global_rank == 0 and not is_lora_name(name):
                state[name] = param.detach().cpu().clone()
    if global_rank == 0:
        for name, buf in persistent_buffers(model):
            if not is_lora_name(name):
                state[name] = buf.detach().cpu().clone()
    return state


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def save_zero_three_model(model_ema, global_rank: int, save_dir: str, zero_stage: int = 0,
                          tokenizer=None, allow=()) -> None:
    """All ranks call this; rank 0 writes an HF folder (safetensors, config, tokenizer) atomically.

    DeepSpeed-Chat's name, signature and semantics (one parameter gathered at a time, rank 0 keeps
    CPU copies of the non-LoRA ones), plus persistent buffers, tied weights stored once, and a write
    into a hidden temporary folder renamed into place: a rank killed while saving leaves the
    previous save, or nothing. ``tokenizer`` is anything with ``save_pretrained(folder)``; it is
    written after the weights; ``allow`` as in ``write_hf_folder``. A failed write is raised on rank 0
    after the closing barrier, so the other ranks are never left waiting.
    """
    state = gather_state_dict(model_ema, global_rank, zero_stage)
    failure = None
    if global_rank == 0:
        try:
            remove_stale_temporaries(save_dir)
            write_hf_folder(unwrap(model_ema), state, tokenizer, save_dir, allow)
        except Exception as err:  # re-raised below, once every rank is past the barrier
            failure = err
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    if failure is not None:
        raise failure


# --------------------------------------------------------------------------------------------
# Offline consolidation
# --------------------------------------------------------------------------------------------


def consolidate_zero_checkpoint(checkpoint_dir, tag=None) -> dict:
    """DeepSpeed's offline way: fp32 weights rebuilt from a ``engine.save_checkpoint`` folder.

    ``zero_to_fp32`` reads every rank's optimizer shard in one process (no GPUs, no launcher) and
    returns the fp32 *master* weights, which under fp16/bf16 training are more precise than the
    16-bit weights the model computes with. Buffers are included; LoRA keys are dropped here.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)
    return {k: v.detach().cpu() for k, v in state.items() if not is_lora_name(k)}
