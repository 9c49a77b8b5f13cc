"""LoRA as DeepSpeed-Chat writes it (``dschat/utils/module/lora.py``), plus the way out to PEFT.

A frozen base weight ``W`` (out, in) gains a trainable low-rank update::

    y = x W^T + b + (dropout(x) @ R @ L) * s,   R: (in, r) Kaiming-uniform,  L: (r, out) zeros,
    s = lora_scaling / r

``R`` is ``lora_right_weight`` and ``L`` is ``lora_left_weight``. PEFT stores the same update as
``lora_A.weight = R^T`` (r, in) and ``lora_B.weight = L^T`` (out, r) with ``s = lora_alpha / r``,
so ``lora_alpha = lora_scaling`` and the weights are only transposed (``export_peft_adapter``).

What sftlib changes from the original:

- a module name that matches nothing is an error listing the names that would match (the original
  converted nothing and training failed later with "element 0 of tensors does not require grad");
- GPT-2-style ``Conv1D`` layers (weight stored transposed) are converted too, not skipped;
- a rank larger than a layer, a rank <= 0, and a head tied to the input embedding are refused;
- ``unfuse_lora_weight`` for the whole model, and an export to a PEFT adapter folder.

Every function works on a plain model, a DeepSpeed engine and a ZeRO-3-partitioned model.

Explained in notebooks/03_lora_conversion.ipynb.
"""

from __future__ import annotations

import math
import os
import re

import torch
import torch.nn.functional as F
from torch import nn

from sftlib.constants import is_lora_name
from sftlib.dist import full_shape, unwrap
from sftlib.errors import SFTError


def _conv1d_class():
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return ()
    return Conv1D


class LinearLayer_LoRA(nn.Module):
    """A linear layer with a frozen weight and a trainable rank-``lora_dim`` update.

    ``weight`` is the layer's existing parameter (out, in); ``fan_in_fan_out=True`` says it is stored
    transposed (in, out), as GPT-2's ``Conv1D`` stores it. Under ZeRO-3 the shape comes from
    ``weight.ds_shape`` because the local tensor is an empty partition.
    """

    def __init__(self, weight, lora_dim=0, lora_scaling=1, lora_droppout=0, bias=None, fan_in_fan_out=False):
        super().__init__()
        if lora_dim <= 0:
            raise SFTError(f"--lora_dim must be > 0 to build a LoRA layer (got {lora_dim})")
        self.weight, self.bias, self.fan_in_fan_out = weight, bias, fan_in_fan_out
        rows, columns = full_shape(weight)
        if fan_in_fan_out:
            rows, columns = columns, rows
        if lora_dim > min(rows, columns):
            raise SFTError(f"--lora_dim {lora_dim} is larger than a layer's dimensions "
                           f"({columns} -> {rows}); use at most {min(rows, columns)}")
        self.lora_right_weight = nn.Parameter(torch.zeros(columns, lora_dim, dtype=weight.dtype))
        self.lora_left_weight = nn.Parameter(torch.zeros(lora_dim, rows, dtype=weight.dtype))
        self.lora_scaling = lora_scaling / lora_dim
        self.lora_dropout = nn.Dropout(lora_droppout) if lora_droppout > 0 else nn.Identity()
        self.reset_parameters()
        self.weight.requires_grad = False
        self.fuse_lora = False

    def extra_repr(self):
        rows, columns = self.lora_left_weight.shape[-1], self.lora_right_weight.shape[0]
        return f"in={columns}, out={rows}, r={self.lora_right_weight.shape[-1]}, scaling={self.lora_scaling:g}"

    def reset_parameters(self):
        nn.init.kaiming_uniform_(self.lora_right_weight, a=math.sqrt(5))  # fan-in is r: U(-1/sqrt(r), 1/sqrt(r))
        nn.init.zeros_(self.lora_left_weight)  # so the update starts at exactly zero

    def lora_delta(self):
        """``s * L^T R^T`` (out, in): what fusing adds to the weight (transposed for ``fan_in_fan_out``)."""
        delta = self.lora_scaling * torch.matmul(self.lora_left_weight.t(), self.lora_right_weight.t())
        return delta.t() if self.fan_in_fan_out else delta

    def fuse_lora_weight(self):
        if not self.fuse_lora:
            self.weight.data += self.lora_delta()
        self.fuse_lora = True

    def unfuse_lora_weight(self):
        if self.fuse_lora:
            self.weight.data -= self.lora_delta()
        self.fuse_lora = False

    def forward(self, x):
        weight = self.weight.t() if self.fan_in_fan_out else self.weight
        out = F.linear(x, weight, self.bias)
        if self.fuse_lora:
            return out
        return out + (self.lora_dropout(x) @ self.lora_right_weight @ self.lora_left_weight) * self.lora_scaling


def recursive_getattr(model, module_name):
    """The submodule (or attribute) at a dotted path: ``recursive_getattr(model, "model.layers.0.mlp")``."""
    for part in module_name.split("."):
        model = getattr(model, part)
    return model


def recursive_setattr(model, module_name, module):
    """Put ``module`` at a dotted path, replacing what was there (how a Linear becomes a LoRA layer)."""
    parent, _, child = module_name.rpartition(".")
    setattr(recursive_getattr(model, parent) if parent else model, child, module)


def lora_candidates(model) -> dict[str, int]:
    """Substrings that select the repeated linear blocks: ``{"model.layers.": 28, "lm_head": 1}``.

    Each Linear/Conv1D name is cut before its first numeric part (the layer index), so one entry
    stands for a whole stack of layers.
    """
    kinds = (nn.Linear, _conv1d_class())
    counts: dict[str, int] = {}
    for name, module in unwrap(model).named_modules():
        if isinstance(module, kinds):
            parts = name.split(".")
            cut = next((i for i, p in enumerate(parts) if p.isdigit()), len(parts))
            key = ".".join(parts[:cut]) + ("." if cut < len(parts) else "")
            counts[key] = counts.get(key, 0) + 1
    return counts


def find_lora_targets(model, part_module_name) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs ``convert_linear_layer_to_lora`` would wrap, or a clear error."""
    model = unwrap(model)
    kinds = (nn.Linear, _conv1d_class())
    matched = [(n, m) for n, m in model.named_modules() if n and part_module_name in n]
    targets = [(n, m) for n, m in matched if isinstance(m, kinds)]
    if targets:
        return targets
    hint = ", ".join(f"{k!r} ({v} layer{'s' if v > 1 else ''})" for k, v in lora_candidates(model).items())
    other = f"; it matches {len(matched)} other modules, e.g. {matched[0][0]} ({type(matched[0][1]).__name__})" \
        if matched else ""
    raise SFTError(f"--lora_module_name {part_module_name!r} matches no nn.Linear or Conv1D layer of "
                   f"{type(model).__name__}{other}; names that would match: {hint or 'none'}")


def convert_linear_layer_to_lora(model, part_module_name, lora_dim=0, lora_scaling=1, lora_droppout=0):
    """Wrap every ``nn.Linear`` (and ``Conv1D``) whose name contains ``part_module_name`` in LoRA.

    Nothing is changed unless every selected layer can be converted. Returns the model.
    """
    if lora_dim <= 0:
        raise SFTError(f"--lora_dim must be > 0 to add LoRA layers (got {lora_dim})")
    model = unwrap(model)
    targets = find_lora_targets(model, part_module_name)
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    conv1d = _conv1d_class()
    for name, module in targets:
        rows, columns = full_shape(module.weight)
        if lora_dim > min(rows, columns):
            raise SFTError(f"--lora_dim {lora_dim} is larger than layer {name} ({rows} x {columns}); "
                           f"use at most {min(rows, columns)}")
        if embeddings is not None and module.weight is getattr(embeddings, "weight", None):
            raise SFTError(f"layer {name} shares its weight with the input embedding, so fusing LoRA into it "
                           f"would change the embedding too; choose a --lora_module_name that leaves it out")
    for name, module in targets:
        layer = LinearLayer_LoRA(module.weight, lora_dim, lora_scaling, lora_droppout, module.bias,
                                 fan_in_fan_out=isinstance(module, conv1d))
        recursive_setattr(model, name, layer.to(module.weight.device))
    return model


def lora_layers(model) -> list[tuple[str, LinearLayer_LoRA]]:
    """Every LoRA layer of the model, with its name."""
    return [(n, m) for n, m in unwrap(model).named_modules() if isinstance(m, LinearLayer_LoRA)]


def _zero3_params(module):
    return [p for p in module.parameters() if hasattr(p, "ds_id")]


def _gathered(module, modifier_rank=None, lora_only=False):
    import deepspeed

    params = [p for p in _zero3_params(module) if not lora_only or p is module.lora_right_weight
              or p is module.lora_left_weight]
    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank, enabled=bool(params))


def convert_lora_to_linear_layer(model):
    """Fuse every LoRA update into its base weight (``W += s L^T R^T``), gathering it under ZeRO-3.

    After fusing, the forward pass uses the base weight alone, and a state dict without the
    ``lora_*`` keys is an ordinary model that plain transformers loads.
    """
    for _, module in lora_layers(model):
        with _gathered(module, modifier_rank=0):
            module.fuse_lora_weight()
    return model


def unfuse_lora_weight(model):
    """Undo ``convert_lora_to_linear_layer``: subtract each update again, back to a trainable LoRA model."""
    for _, module in lora_layers(model):
        with _gathered(module, modifier_rank=0):
            module.unfuse_lora_weight()
    return model


def only_optimize_lora_parameters(model, force_optimize_params=()):
    """Leave ``requires_grad`` on LoRA parameters (and names containing a ``force_optimize_params`` entry)."""
    named = list(unwrap(model).named_parameters())
    if not any(is_lora_name(n) for n, _ in named):
        raise SFTError("the model has no LoRA parameters, so nothing would train; "
                       "convert it first (--lora_dim > 0 and a --lora_module_name that matches)")
    for name, param in named:
        param.requires_grad = is_lora_name(name) or any(f in name for f in force_optimize_params)
    return model


def make_model_gradient_checkpointing_compatible(model):
    """Make the embedding output require grad, so checkpointing works with a frozen base.

    Reentrant checkpointing (torch's old default, DeepSpeed-Chat's era) only back-propagates into a
    block whose inputs require grad; with a frozen embedding they do not, and the LoRA weights
    inside get no gradient. transformers >= 5 checkpoints non-reentrantly and does not need this.
    """
    model = unwrap(model)
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    elif hasattr(model, "get_input_embeddings"):
        def make_inputs_require_grad(module, inputs, output):
            output.requires_grad_(True)

        model.get_input_embeddings().register_forward_hook(make_inputs_require_grad)
    return model


def count_parameters(model) -> dict[str, int]:
    """Total and trainable parameter counts (ZeRO-3 partitions counted at full size)."""
    params = list(unwrap(model).parameters())
    numel = [p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in params]
    return {"total": sum(numel), "trainable": sum(n for n, p in zip(numel, params) if p.requires_grad)}


# --------------------------------------------------------------------------------------------
# PEFT interop
# --------------------------------------------------------------------------------------------

def lora_state_for_peft(model) -> tuple[dict[str, torch.Tensor], dict]:
    """PEFT's view of the LoRA weights: ``{"<name>.lora_A.weight": R^T, "<name>.lora_B.weight": L^T}``.

    Also returns the settings PEFT needs (rank, alpha, targets, fan_in_fan_out). Every rank must
    call it under ZeRO-3 (the weights are gathered); the tensors are CPU copies.
    """
    layers = lora_layers(model)
    if not layers:
        raise SFTError("the model has no LoRA layers to export; convert it with --lora_dim > 0 first")
    if any(m.fuse_lora for _, m in layers):
        raise SFTError("the LoRA layers are fused into the base weights; call unfuse_lora_weight before exporting")
    ranks = {full_shape(m.lora_right_weight)[-1] for _, m in layers}
    scalings = {m.lora_scaling for _, m in layers}
    fan = {m.fan_in_fan_out for _, m in layers}
    if len(ranks) != 1 or len(scalings) != 1 or len(fan) != 1:
        raise SFTError("every LoRA layer must share one rank, scaling and layout to be exported as one PEFT adapter")
    state = {}
    for name, module in layers:
        with _gathered(module, lora_only=True):
            state[f"{name}.lora_A.weight"] = module.lora_right_weight.detach().t().contiguous().cpu().clone()
            state[f"{name}.lora_B.weight"] = module.lora_left_weight.detach().t().contiguous().cpu().clone()
    r = ranks.pop()
    settings = {"r": r, "lora_alpha": scalings.pop() * r, "target_modules": [n for n, _ in layers],
                "fan_in_fan_out": fan.pop()}
    return state, settings


def export_peft_adapter(model, base_model_name_or_path, out_dir, global_rank=0, base_model_path=None):
    """Write the LoRA weights as a PEFT adapter folder that ``peft.PeftModel.from_pretrained`` loads.

    ``out_dir`` gets ``adapter_config.json`` (``r``, ``lora_alpha = lora_scaling``, the exact module
    names, ``base_model_name_or_path``) and ``adapter_model.safetensors``. The adapter travels, so
    ``base_model_name_or_path`` is written as given and must be what its user will load: a hub id
    (``"facebook/opt-1.3b"``) or a relative path (``"toy_world/opt-tiny"``); an absolute path, which
    names a folder of this machine only, is refused. ``base_model_path`` is where the base model is
    here, when the name does not reach it from the current folder; it is only read, to check that
    the vocabulary sizes agree (the base model must be the one LoRA was added to). Under ZeRO-3
    every rank calls this and ``global_rank`` 0 writes. Returns ``out_dir``.
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    name = str(base_model_name_or_path)
    if os.path.isabs(name):
        raise SFTError(f"base_model_name_or_path {name!r} is an absolute path of this machine, and the adapter "
                       f"config would carry it; pass a hub id or a relative path (e.g. {os.path.basename(name)!r}), "
                       f"and base_model_path={name!r} to check the vocabulary against it")
    state, settings = lora_state_for_peft(model)
    if global_rank != 0:
        return out_dir
    _warn_if_vocab_differs(model, base_model_path if base_model_path is not None else name)
    alpha = settings["lora_alpha"]
    config = LoraConfig(r=settings["r"], lora_alpha=int(alpha) if float(alpha).is_integer() else alpha,
                        lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                        target_modules=settings["target_modules"], fan_in_fan_out=settings["fan_in_fan_out"],
                        base_model_name_or_path=name)
    config.save_pretrained(str(out_dir))
    prefix = "base_model.model."
    save_file({prefix + k: v for k, v in state.items()}, f"{out_dir}/adapter_model.safetensors",
              metadata={"format": "pt"})
    return out_dir


def _warn_if_vocab_differs(model, base_model_name_or_path):
    import warnings

    from transformers import AutoConfig

    try:
        base_vocab = AutoConfig.from_pretrained(str(base_model_name_or_path)).vocab_size
    except (OSError, ValueError):
        return  # the base is not reachable from here; PEFT will check when it loads
    rows = full_shape(unwrap(model).get_input_embeddings().weight)[0]
    if rows != base_vocab:
        warnings.warn(f"the model's vocabulary ({rows}) differs from the base's ({base_vocab}); the adapter does not "
                      f"carry embeddings: call base.resize_token_embeddings({rows}) before PeftModel.from_pretrained")


def load_lora_from_peft(model, peft_state: dict, strict=True):
    """Copy PEFT LoRA tensors (names as PEFT's state dict has them) into sftlib's LoRA layers.

    Accepts keys with or without the ``base_model.model.`` prefix and the adapter name
    (``lora_A.default.weight``). Used to give both implementations the same weights.
    """
    clean = {}
    for key, value in peft_state.items():
        key = re.sub(r"^base_model\.model\.", "", key)
        key = re.sub(r"\.lora_([AB])\.[^.]+\.weight$", r".lora_\1.weight", key)
        clean[key] = value
    used = set()
    for name, module in lora_layers(model):
        for peft_name, attr in (("lora_A", "lora_right_weight"), ("lora_B", "lora_left_weight")):
            key = f"{name}.{peft_name}.weight"
            if key not in clean:
                if strict:
                    raise SFTError(f"the PEFT weights have no {key}")
                continue
            with _gathered(module, modifier_rank=0, lora_only=True):
                getattr(module, attr).data.copy_(clean[key].t())
            used.add(key)
    if strict and set(clean) - used:
        raise SFTError(f"PEFT tensors with no sftlib LoRA layer: {sorted(set(clean) - used)[:3]}")
    return model
