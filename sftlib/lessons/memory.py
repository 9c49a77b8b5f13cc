"""How big a model can I train? A memory planner, checked against DeepSpeed's own estimators.

``plan_memory`` counts the bytes per GPU of a 16-bit mixed-precision Adam run under ZeRO 0-3, with
offload, LoRA and activations; ``deepspeed_estimate`` returns what DeepSpeed's ``*_all_cold``
estimators print; ``plan_table`` tries six published models on three setups and three recipes,
beside the "total GPU GB / 3 billion parameters" rule of thumb.

Explained in notebooks/04_zero3_saving.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GB = 1e9


@dataclass(frozen=True)
class ModelSpec:
    """The shape numbers the planner needs; ``params`` and ``largest_layer`` counted on a meta model."""

    name: str
    params: int
    largest_layer: int  # elements of the biggest single module (the embedding here): ZeRO-3 gathers it whole
    layers: int
    hidden: int
    heads: int
    vocab: int
    ffn: int


_CONFIGS = {  # published architectures (config.json of each hub model)
    "OPT-1.3B": ("opt", dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, ffn_dim=8192)),
    "OPT-6.7B": ("opt", dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, ffn_dim=16384)),
    "OPT-13B": ("opt", dict(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, ffn_dim=20480)),
    "OPT-66B": ("opt", dict(hidden_size=9216, num_hidden_layers=64, num_attention_heads=72, ffn_dim=36864)),
    "Llama-2-7B": ("llama", dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                 num_key_value_heads=32, intermediate_size=11008)),
    "Llama-2-70B": ("llama", dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64,
                                  num_key_value_heads=8, intermediate_size=28672)),
}


def model_spec(name: str) -> ModelSpec:
    """Count a published model's parameters by building it on the ``meta`` device (no memory, no download)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, OPTConfig

    kind, dims = _CONFIGS[name]
    if kind == "opt":
        cfg = OPTConfig(vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=dims["hidden_size"],
                        tie_word_embeddings=True, **dims)
        ffn = dims["ffn_dim"]
    else:
        cfg = LlamaConfig(vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=False, **dims)
        ffn = dims["intermediate_size"]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    params = sum(p.numel() for p in model.parameters())  # each tied parameter once
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return ModelSpec(name, params, largest, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
                     cfg.vocab_size, ffn)


def lora_params(spec: ModelSpec, lora_dim: int = 128) -> int:
    """LoRA elements when every linear layer of every block gets rank ``lora_dim`` (DeepSpeed-Chat's
    ``--lora_module_name decoder.layers.``): r * (in + out) per linear."""
    h, f = spec.hidden, spec.ffn
    per_layer = 4 * (h + h) + (h + f) + (f + h) if f else 0
    if spec.name.startswith("Llama"):
        per_layer += f + h  # the gate projection
    return lora_dim * per_layer * spec.layers


def activation_bytes(spec: ModelSpec, micro_batch: int, seq_len: int, gradient_checkpointing: bool) -> int:
    """16-bit activation memory of one rank (Korthikanti et al. 2022, no sequence parallelism).

    One block keeps about s*b*h*(34 + 5*a*s/h) bytes for backward; with checkpointing only each
    block's input (2*s*b*h bytes) is kept and one block's worth is recomputed at a time. The logits
    (b*s*V, 16-bit plus the fp32 copy for the loss) come on top either way.
    """
    sbh = seq_len * micro_batch * spec.hidden
    block = sbh * (34 + 5 * spec.heads * seq_len / spec.hidden)
    blocks = spec.layers * 2 * sbh + block if gradient_checkpointing else spec.layers * block
    logits = micro_batch * seq_len * spec.vocab * (2 + 4)
    return int(blocks + logits)


def plan_memory(params: int, n_gpus: int = 1, zero_stage: int = 3, offload_optimizer: bool = False,
                offload_param: bool = False, trainable: int | None = None, largest_layer: int = 0,
                activations: int = 0, sub_group_size: int = int(1e9)) -> dict:
    """Bytes per GPU (and CPU bytes per node) for a 16-bit mixed-precision Adam run.

    Per trained parameter DeepSpeed keeps: 16-bit weight (2), 16-bit gradient (2), fp32 master
    weight (4), Adam's two moments (4 + 4), and at ``step`` an fp32 copy of the gradient (4). A
    frozen parameter (LoRA's base weights) keeps only its 16-bit weight. ZeRO-1 partitions the
    optimizer part (master, moments, fp32 gradient) over the GPUs, ZeRO-2 also the gradients,
    ZeRO-3 also the weights, at the price of gathering the largest layer whole (weight and gradient,
    4 bytes per element). ZeRO-3 makes the fp32 gradient one sub-group at a time. Offloading moves
    the optimizer part and 16-bit gradients (``offload_optimizer``), or also the weights
    (``offload_param``, ZeRO-3 only), to CPU memory. ``trainable`` defaults to ``params``; pass
    LoRA's count for a LoRA run with ``--only_optimize_lora``. Against DeepSpeed's estimators: the
    same numbers for ZeRO-2 and for ZeRO-3 with offload; for ZeRO-3 without offload DeepSpeed
    charges 18 bytes / GPUs per parameter (no 16-bit weight shard, a whole fp32 gradient shard), so
    the two differ by 2/GPUs bytes per parameter, minus the sub-group saving.
    """
    g = n_gpus
    t = params if trainable is None else trainable
    shard_opt, shard_grad, shard_w = (g if zero_stage >= k else 1 for k in (1, 2, 3))
    weights = 2 * params / shard_w
    grads = 2 * t / shard_grad
    fp32_grad = 4 * (min(sub_group_size, t / g) if zero_stage == 3 else t / shard_opt)
    optim = 12 * t / shard_opt
    gather = 4 * largest_layer if zero_stage == 3 else 0
    cpu = 0.0  # summed over the node's GPUs: each moves its own partitions
    if offload_optimizer:
        cpu += 18 * t
        grads = fp32_grad = optim = 0.0
    if offload_param and zero_stage == 3:
        cpu += 2 * params
        weights = 0.0
    parts = {"weights": weights, "grads": grads, "fp32_grad": fp32_grad, "optimizer": optim, "gather": gather,
             "activations": float(activations)}
    gpu = sum(parts.values())
    return {**{k: int(v) for k, v in parts.items()}, "gpu_bytes": int(gpu), "gpu_gb": gpu / GB,
            "cpu_bytes_per_node": int(cpu), "cpu_gb_per_node": cpu / GB}


def deepspeed_estimate(params: int, n_gpus: int, zero_stage: int, offload_optimizer: bool = False,
                       offload_param: bool = False, largest_layer: int = 0) -> int:
    """GPU bytes from DeepSpeed's own estimator (the numbers its ``*_all_cold`` functions print)."""
    if zero_stage == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        return estimate_zero2_model_states_mem_needs(params, n_gpus, 1, cpu_offload=offload_optimizer)[1]
    if zero_stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        return estimate_zero3_model_states_mem_needs(params, largest_layer, n_gpus, 1, cpu_offload=offload_optimizer,
                                                     cpu_offload_params=offload_param)[1]
    raise ValueError("DeepSpeed has estimators for ZeRO-2 and ZeRO-3 only")


def fits(plan: dict, gpu_gb: float, reserve_gb: float = 2.0) -> bool:
    """True when the plan leaves ``reserve_gb`` per GPU for the CUDA context, NCCL and fragmentation."""
    return plan["gpu_gb"] <= gpu_gb - reserve_gb


RECIPES = {  # name: (zero stage, offload optimizer, offload params, LoRA only, gradient checkpointing)
    "full, ZeRO-3": (3, False, False, False, False),
    "full, ZeRO-3 + offload": (3, True, True, False, True),
    "LoRA + ckpt, ZeRO-3": (3, False, False, True, True),
}


def plan_recipe(spec: ModelSpec, recipe: str, n_gpus: int, micro_batch: int = 1, seq_len: int = 512,
                lora_dim: int = 128) -> dict:
    """``plan_memory`` for one of ``RECIPES`` on a ``ModelSpec``, activations included."""
    stage, off_opt, off_par, lora_only, ckpt = RECIPES[recipe]
    trainable = lora_params(spec, lora_dim) if lora_only else None
    act = activation_bytes(spec, micro_batch, seq_len, ckpt)
    return plan_memory(spec.params, n_gpus, stage, off_opt, off_par, trainable, spec.largest_layer, act)


def rule_of_thumb_billions(n_gpus: int, gpu_gb: float) -> float:
    """The step-1 README's rule: ZeRO-3, gradient checkpointing and LoRA train about total GPU GB / 3 billion
    parameters."""
    return n_gpus * gpu_gb / 3


SETUPS = ((1, 24, 64), (1, 48, 256), (8, 80, 1024))  # (GPUs, GB per GPU, CPU RAM GB): desktop, workstation, DGX node


def plan_table(models=tuple(_CONFIGS), setups=SETUPS, recipes=tuple(RECIPES), micro_batch: int = 1,
               seq_len: int = 512):
    """A pandas table: GB per GPU for every model x setup x recipe, whether it fits, and what GB/3 says.

    A plan fits when each GPU keeps 2 GB free and, with offload, the node's CPU RAM holds what moved there.
    """
    import pandas as pd

    rows = []
    for name in models:
        spec = model_spec(name)
        for n_gpus, gpu_gb, ram_gb in setups:
            for recipe in recipes:
                plan = plan_recipe(spec, recipe, n_gpus, micro_batch, seq_len)
                rows.append({"model": name, "params_B": spec.params / 1e9, "setup": f"{n_gpus}x{gpu_gb}GB",
                             "recipe": recipe, "gb_per_gpu": round(plan["gpu_gb"], 1),
                             "cpu_gb": round(plan["cpu_gb_per_node"], 0),
                             "fits": fits(plan, gpu_gb) and plan["cpu_gb_per_node"] <= 0.9 * ram_gb,
                             "gb3_rule_fits": spec.params / 1e9 <= rule_of_thumb_billions(n_gpus, gpu_gb)})
    return pd.DataFrame(rows)

