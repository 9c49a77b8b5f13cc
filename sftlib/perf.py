"""Throughput: samples/s, tokens/s and TFLOPs per device, with Megatron's FLOPs formula done right.

DeepSpeed-Chat's ``dschat/utils/perf.py`` prints ``TFLOPs`` after dividing a per-device FLOP count
by the world size (so 8 GPUs report an eighth of the truth), reads the config through
``model.model`` (which a DeepSpeed engine does not have: DeepSpeedExamples #924), and applies the
recompute form of the formula to runs without recompute. Here the count is per device, the sizes
come from ``model.config`` under any of the usual names, and every term is counted once:

    per token, forward:  L * (2*h*(2h + 2*kv) + 2*m*h*f + 4*s*h) + 2*h*V
                         (s: the row's length; in a packed row, the token's own sample's length)
    per token, train:    3 * forward (+1 forward of the layers with gradient checkpointing)
                         - forward of every frozen weight matrix (no weight-gradient matmul)
                         + 3 (or 4) * LoRA's two low-rank matmuls, which do train

A frozen matrix's backward is one matmul (the input's gradient) instead of two, so with
``--only_optimize_lora`` the count read from the model (``trainable_flops``) is up to ~1.5x
lower than the dense formula's.

With ``kv = h``, ``f = 4h`` and ``m = 2`` (GPT/OPT blocks) and recompute this is exactly Megatron's
``96 B s L h^2 (1 + s/(6h) + V/(16 L h))``. Explained in notebooks/06_hybrid_engine_and_logs.ipynb.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from sftlib.constants import IGNORE_INDEX

_HIDDEN = ("hidden_size", "n_embd", "d_model", "dim")
_LAYERS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HEADS = ("num_attention_heads", "n_head", "num_heads", "n_heads")
_FFN = ("intermediate_size", "ffn_dim", "n_inner", "d_ff", "ffn_hidden_size")
_GATED_ACTS = ("silu", "swiglu", "geglu", "gelu_pytorch_tanh")  # Llama/Mistral/Qwen/Gemma style MLPs


def _get(config, names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    if default is None:
        raise ValueError(f"{type(config).__name__} has none of {names}; pass the sizes by hand")
    return default


@dataclass(frozen=True)
class ModelDims:
    """The sizes a FLOP count needs: hidden, layers, vocabulary, heads, KV width, MLP width, gated MLP."""

    hidden: int
    layers: int
    vocab: int
    heads: int
    kv_dim: int
    ffn: int
    gated: bool


def model_dims(model_or_config) -> ModelDims:
    """Read the sizes from a Hugging Face config, model or DeepSpeed engine (never ``model.model``)."""
    config = model_or_config
    for attr in ("module", "config"):  # engine -> model -> config
        if hasattr(config, attr) and not isinstance(config, dict):
            config = getattr(config, attr)
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    hidden = int(_get(config, _HIDDEN))
    heads = int(_get(config, _HEADS))
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    ffn = int(_get(config, _FFN, 4 * hidden))
    act = str(getattr(config, "hidden_act", getattr(config, "activation_function", ""))).lower()
    gated = getattr(config, "model_type", "") in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2") \
        or act in _GATED_ACTS and hasattr(config, "intermediate_size")
    return ModelDims(hidden, int(_get(config, _LAYERS)), int(_get(config, ("vocab_size",))), heads,
                     hidden // heads * kv_heads, ffn, bool(gated))


def forward_flops_per_token(dims: ModelDims, seq_len: int) -> float:
    """Matmul FLOPs of one token's forward pass (2 per multiply-add; attention over ``seq_len``)."""
    h = dims.hidden
    attention_proj = 2 * h * (2 * h + 2 * dims.kv_dim)
    mlp = 2 * (3 if dims.gated else 2) * h * dims.ffn
    attention_scores = 4 * seq_len * h
    return dims.layers * (attention_proj + mlp + attention_scores) + 2 * h * dims.vocab


@dataclass(frozen=True)
class Trainable:
    """Per-token forward FLOPs of frozen weight matrices and of LoRA's low-rank matmuls."""

    frozen: float = 0.0
    lora: float = 0.0


def trainable_flops(model) -> Trainable:
    """Walk a model (or engine): every matmul weight (``nn.Linear``, GPT-2's ``Conv1D``, sftlib's LoRA
    layer) whose weight takes no gradient, and every unfused LoRA pair. Full shapes under ZeRO-3."""
    from sftlib.dist import full_shape, unwrap

    frozen = lora = 0.0
    for module in unwrap(model).modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.nn.Parameter) or isinstance(module, (torch.nn.Embedding,
                                                                             torch.nn.LayerNorm)):
            continue
        shape = full_shape(weight)
        if len(shape) == 2 and not weight.requires_grad:
            frozen += 2.0 * shape[0] * shape[1]
        right = getattr(module, "lora_right_weight", None)
        if right is not None and not getattr(module, "fuse_lora", False):
            (columns, rank), rows = full_shape(right), full_shape(module.lora_left_weight)[1]
            lora += 2.0 * rank * (columns + rows)
    return Trainable(frozen, lora)


def _flop_terms(dims: ModelDims, gradient_checkpointing: bool, trainable: Trainable | None) -> tuple[float, float]:
    """One training step's FLOPs as (per token outside attention scores, per attended query-key pair)."""
    passes = 4 if gradient_checkpointing else 3  # the layers run forward twice with checkpointing
    per_token = 3 * forward_flops_per_token(dims, 0)
    if gradient_checkpointing:  # the LM head is not recomputed
        per_token += forward_flops_per_token(dims, 0) - 2 * dims.hidden * dims.vocab
    if trainable is not None:
        per_token += passes * trainable.lora - trainable.frozen
    return per_token, passes * dims.layers * 4.0 * dims.hidden


def train_flops(model_or_config, batch_size: int, seq_len: int, gradient_checkpointing: bool = False,
                trainable: Trainable | None = None, attended: float | None = None) -> float:
    """FLOPs one device does for one micro batch of ``batch_size`` x ``seq_len`` (padded) tokens.

    ``trainable`` (from ``trainable_flops``): frozen matrices skip their weight-gradient matmul,
    LoRA's matmuls are added (forward, two backward, and the recompute with checkpointing).
    ``attended``: the query-key pairs attention scores over all rows; a padded row attends over its
    whole length (``batch_size * seq_len**2``, the default), a packed row over each sample's own
    (``attended_pairs``)."""
    dims = model_or_config if isinstance(model_or_config, ModelDims) else model_dims(model_or_config)
    per_token, per_pair = _flop_terms(dims, gradient_checkpointing, trainable)
    pairs = batch_size * seq_len * seq_len if attended is None else attended
    return float(batch_size * seq_len * per_token + per_pair * pairs)


def megatron_flops(batch_size: int, seq_len: int, layers: int, hidden: int, vocab: int,
                   checkpoint_factor: int = 4) -> float:
    """The formula as DeepSpeed-Chat writes it: ``24 c B s L h^2 (1 + s/(6h) + V/(16 L h))``."""
    return (24 * checkpoint_factor * batch_size * seq_len * layers * hidden ** 2
            * (1 + seq_len / (6 * hidden) + vocab / (16 * layers * hidden)))


def tflops(flops: float, seconds: float) -> float:
    """TFLOP/s of one device: its own FLOPs over its own time; never divided by the world size."""
    return flops / max(seconds, 1e-12) / 1e12


def profile_forward_flops(model, input_ids: torch.Tensor) -> float:
    """DeepSpeed's flops profiler on one forward pass (what ``train_flops / 3`` should match)."""
    from deepspeed.profiling.flops_profiler import get_model_profile

    with torch.no_grad():
        flops, _, _ = get_model_profile(model, kwargs={"input_ids": input_ids}, print_profile=False,
                                        detailed=False, as_string=False, warm_up=0)
    return float(flops)


def attended_pairs(position_ids: torch.Tensor) -> torch.Tensor:
    """Query-key pairs of block-diagonal attention over packed rows: each sample's length squared, summed.

    A sample's positions count 0, 1, ..., n-1 and 1 + 3 + ... + (2n-1) = n**2, so the sum of
    ``2 * position + 1`` over every token is the count, on the tensor's device (no host sync). The
    collator's padding run is a block of its own and counts like a sample, as padded tokens do."""
    return (2 * position_ids.long() + 1).sum()


def packed_samples_tensor(batch: dict) -> torch.Tensor:
    """Samples in packed rows, as a tensor on the batch's device: ``position_ids`` restarts, less each
    row whose last run is padding (``sftlib.collate.PackingCollator`` gives padding its own run, all
    labels ``IGNORE_INDEX``)."""
    pos, labels = batch["position_ids"], batch.get("labels")
    starts = pos == 0
    count = starts.sum()
    if labels is not None:
        index = torch.arange(pos.shape[-1], device=pos.device)
        last = torch.where(starts, index, -1).amax(-1, keepdim=True)  # each row's last restart
        padding = (last[:, 0] > 0) & ((labels == IGNORE_INDEX) | (index < last)).all(-1)
        count = count - padding.sum()
    return count


def packed_samples(batch: dict) -> int:
    """``packed_samples_tensor`` as a Python int (one host sync)."""
    return int(packed_samples_tensor(batch))


class StepMeter:
    """Counts samples, tokens and FLOPs of this rank's micro batches between two log lines, and the
    time they took: one clock for every rate, so samples/s, tokens/s and TFLOPs of a log line are
    all over the same span. ``pause`` stops the clock (an evaluation between epochs, a checkpoint
    save) and ``resume`` restarts it, so an optimizer step that spans two epochs counts its own
    micro batches' time only.

    ``add`` never waits for the device: what only the batch's tensors know (a 2-D mask's real tokens,
    packed rows' samples and attention) is summed there, and ``report`` brings it to the host once, after
    the device's queued work is done, so the span's clock stops when the GPU has finished it."""

    def __init__(self, model_or_config, gradient_checkpointing: bool = False, world_size: int = 1):
        self.dims = model_or_config if isinstance(model_or_config, ModelDims) else model_dims(model_or_config)
        is_model = isinstance(getattr(model_or_config, "module", model_or_config), torch.nn.Module)
        self.trainable = trainable_flops(model_or_config) if is_model else None  # LoRA / frozen weights
        self.checkpointing = gradient_checkpointing
        self.world_size = world_size
        self.per_pair = _flop_terms(self.dims, gradient_checkpointing, self.trainable)[1]
        self.reset()

    def reset(self) -> None:
        """Clear the counts and start a new span now."""
        self.tokens = 0
        self._host = {"samples": 0, "real_tokens": 0, "flops": 0.0, "pairs": 0}
        self._device: dict[str, torch.Tensor] = {}  # counts still on the batches' device
        self._last_device = None
        self.seconds, self.t0 = 0.0, time.time()

    def pause(self) -> None:
        """Stop the clock; the time until ``resume`` belongs to no span."""
        if self.t0 is not None:
            self.seconds += time.time() - self.t0
            self.t0 = None

    def resume(self) -> None:
        """Restart a paused clock (a running one keeps running)."""
        if self.t0 is None:
            self.t0 = time.time()

    def elapsed(self) -> float:
        """Seconds counted in this span so far."""
        return self.seconds + (time.time() - self.t0 if self.t0 is not None else 0.0)

    def _count(self, name: str, value) -> None:
        if isinstance(value, torch.Tensor):  # stays on its device: no host sync
            self._device[name] = self._device[name] + value if name in self._device else value
        else:
            self._host[name] += value

    def add(self, batch: dict, real_tokens: int | torch.Tensor | None = None) -> None:
        """Count one micro batch (``input_ids`` of shape batch x padded length; packed rows count their
        samples and each sample's own attention); ``real_tokens``: its non-padding tokens, when the
        caller knows them (an int, or a tensor on any device). Reads no tensor's value on the host."""
        ids = batch["input_ids"]
        b, s = ids.shape[:2]
        self._last_device = ids.device
        mask = batch.get("attention_mask")
        packed = "position_ids" in batch and (mask is None or mask.dim() == 4)
        self._count("samples", packed_samples_tensor(batch) if packed else b)
        self.tokens += b * s  # padded tokens: what the device computes on (the model may rewrite the mask)
        self._count("real_tokens", real_tokens if real_tokens is not None else (
            mask.sum() if mask is not None and mask.dim() == 2 else b * s))
        if packed:  # block-diagonal attention: the pairs are counted on the device
            self._count("flops", train_flops(self.dims, b, s, self.checkpointing, self.trainable, attended=0))
            self._count("pairs", attended_pairs(batch["position_ids"]))
        else:
            self._count("flops", train_flops(self.dims, b, s, self.checkpointing, self.trainable))

    def totals(self) -> dict:
        """This span's ``samples``, ``tokens``, ``real_tokens`` and ``flops`` as Python numbers: the
        device's counts come to the host here, in one transfer, once the device's queued work is done."""
        if self._last_device is not None and self._last_device.type != "cpu":
            torch.accelerator.synchronize(self._last_device)
        out = dict(self._host, tokens=self.tokens)
        if self._device:
            names, first = list(self._device), next(iter(self._device.values()))
            values = torch.stack([self._device[n].reshape(()).to(first.device, torch.int64) for n in names])
            for name, value in zip(names, values.tolist()):
                out[name] += value
        out["flops"] = out["flops"] + self.per_pair * out.pop("pairs")
        return out

    samples = property(lambda self: self.totals()["samples"], doc="Samples counted so far (a host sync).")
    real_tokens = property(lambda self: self.totals()["real_tokens"], doc="Real tokens so far (a host sync).")
    flops = property(lambda self: self.totals()["flops"], doc="FLOPs counted so far (a host sync).")

    def report(self) -> dict:
        """Rates over this span (samples/s and tokens/s for all ranks, TFLOPs per device, ``seconds``
        the span itself); then a new span starts. The one host sync of a span."""
        counts = self.totals()  # first: the clock stops after the device has finished the span's work
        seconds = max(self.elapsed(), 1e-9)
        out = {"samples_per_s": counts["samples"] * self.world_size / seconds,
               "tokens_per_s": counts["real_tokens"] * self.world_size / seconds,
               "padded_tokens_per_s": counts["tokens"] * self.world_size / seconds,
               "tflops": tflops(counts["flops"], seconds), "seconds": seconds}
        self.reset()
        return out

    def line(self) -> str:
        """``12.3 samples/s | 0.004 TFLOPs``, for the training log line; starts a new span."""
        return rate_line(self.report())


def rate_line(rates: dict) -> str:
    """The rates part of a training log line, from a ``StepMeter.report``."""
    return f"{rates['samples_per_s']:.1f} samples/s | {rates['tflops']:.3g} TFLOPs"
