"""LoRA as DeepSpeed-Chat writes it (``dschat/utils/module/lora.py``).

A frozen base weight ``W`` plus a trainable low-rank update: ``y = x W^T + b + (x R L) * s`` with
``R`` (in, r) Kaiming-uniform, ``L`` (r, out) zeros and ``s = lora_scaling / r``.

Explained in notebooks/03_lora_conversion.ipynb.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sftlib.utils import SFTError


class LinearLayer_LoRA(nn.Module):
    """A linear layer with a frozen weight and a trainable rank-``lora_dim`` update."""

    def __init__(self, weight, lora_dim=0, lora_scaling=1, lora_droppout=0, bias=None):
        super().__init__()
        if lora_dim <= 0:
            raise SFTError(f"--lora_dim must be > 0 to build a LoRA layer (got {lora_dim})")
        self.weight, self.bias = weight, bias
        try:
            rows, columns = weight.ds_shape  # ZeRO-3 partitioned parameter
        except AttributeError:
            rows, columns = weight.shape
        if lora_dim > min(rows, columns):
            raise SFTError(f"--lora_dim {lora_dim} is larger than a layer's dimensions ({columns} -> {rows})")
        self.lora_right_weight = nn.Parameter(torch.zeros(columns, lora_dim))
        self.lora_left_weight = nn.Parameter(torch.zeros(lora_dim, rows))
        self.lora_scaling = lora_scaling / lora_dim
        self.lora_dropout = nn.Dropout(lora_droppout) if lora_droppout > 0 else nn.Identity()
        self.reset_parameters()
        self.weight.requires_grad = False
        self.fuse_lora = False

    def eval(self):
        self.lora_dropout.eval()
        return self

    def train(self, mode=True):
        self.lora_dropout.train(mode)
        return self

    def reset_parameters(self):
        nn.init.kaiming_uniform_(self.lora_right_weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_left_weight)

    def _delta(self):
        return self.lora_scaling * torch.matmul(self.lora_left_weight.t(), self.lora_right_weight.t())

    def fuse_lora_weight(self):
        if not self.fuse_lora:
            self.weight.data += self._delta()
        self.fuse_lora = True

    def unfuse_lora_weight(self):
        if self.fuse_lora:
            self.weight.data -= self._delta()
        self.fuse_lora = False

    def forward(self, x):
        out = F.linear(x, self.weight, self.bias)
        if self.fuse_lora:
            return out
        return out + (self.lora_dropout(x) @ self.lora_right_weight @ self.lora_left_weight) * self.lora_scaling


def _recursive_getattr(model, name):
    for part in name.split("."):
        model = getattr(model, part)
    return model


def _recursive_setattr(model, name, module):
    parent, _, child = name.rpartition(".")
    setattr(_recursive_getattr(model, parent) if parent else model, child, module)


def convert_linear_layer_to_lora(model, part_module_name, lora_dim=0, lora_scaling=1, lora_droppout=0):
    """Wrap every ``nn.Linear`` whose name contains ``part_module_name`` in ``LinearLayer_LoRA``.

    A name that matches no Linear layer is an error listing candidates (the original silently
    converted nothing).
    """
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and part_module_name in n]
    if not names:
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        prefixes = sorted({n.rsplit(".", 2)[0] + "." for n in linear if "." in n})[:6]
        raise SFTError(f"--lora_module_name {part_module_name!r} matches no Linear layer; "
                       f"candidates look like: {', '.join(prefixes) or 'none (no nn.Linear in the model)'}")
    for name in names:
        module = _recursive_getattr(model, name)
        layer = LinearLayer_LoRA(module.weight, lora_dim, lora_scaling, lora_droppout, module.bias)
        _recursive_setattr(model, name, layer.to(module.weight.device).to(module.weight.dtype))
    return model


def _zero3_params(module):
    return [p for p in module.parameters() if hasattr(p, "ds_id")]


def convert_lora_to_linear_layer(model):
    """Fuse every LoRA update into its base weight (gathering it first under ZeRO-3)."""
    import deepspeed

    for module in model.modules():
        if isinstance(module, LinearLayer_LoRA):
            with deepspeed.zero.GatheredParameters(_zero3_params(module), modifier_rank=0,
                                                   enabled=bool(_zero3_params(module))):
                module.fuse_lora_weight()
    return model


def only_optimize_lora_parameters(model, force_optimize_params=()):
    """Leave ``requires_grad`` on LoRA parameters (and ``force_optimize_params``) only."""
    for name, param in model.named_parameters():
        param.requires_grad = "lora_right_weight" in name or "lora_left_weight" in name or \
            any(f in name for f in force_optimize_params)
    return model


def make_model_gradient_checkpointing_compatible(model):
    """Make the embedding output require grad, so checkpointing works with a frozen base."""
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    elif hasattr(model, "get_input_embeddings"):
        def make_inputs_require_grad(module, inputs, output):
            output.requires_grad_(True)

        model.get_input_embeddings().register_forward_hook(make_inputs_require_grad)
    return model
