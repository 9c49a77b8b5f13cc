"""DeepSpeed configuration builders (``dschat/utils/ds_utils.py``): every field DeepSpeed-Chat sets.

The ``hybrid_engine`` block is step 3's: it swaps the actor into DeepSpeed's CUDA inference kernels
to generate, then back to training. Those kernels do not exist on a CPU, so ``check_hybrid_engine``
refuses the block there in one sentence instead of DeepSpeed's "This op had not been implemented on
CPU backend" deep in a traceback. Print a config::

    python -m sftlib.ds_config --zero_stage 3             # the config step 1 would use
    python -m sftlib.ds_config --enable_hybrid_engine     # CPU: one sentence, exit 2

The hybrid engine at work is a lesson: ``python -m sftlib.lessons.hybrid_engine`` (CUDA only; with the
pinned deepspeed 0.19.8 and transformers 5.24 it refuses OPT in one line there too, and says why).

Explained in notebooks/06_hybrid_engine_and_logs.ipynb.
"""

from __future__ import annotations

import argparse
import json

from sftlib.cli import run
from sftlib.dist import accelerator_name
from sftlib.errors import SFTError

GLOBAL_BATCH_SIZE = 32  # placeholder; sftlib.train overwrites it from the micro batch and world size
MICRO_BATCH_SIZE = 4


def _precision(dtype: str, loss_scale_window: int | None = 100) -> dict:
    if dtype == "fp16":  # DeepSpeed-Chat's eval config sets no window (DeepSpeed's default, 1000, applies)
        window = {} if loss_scale_window is None else {"loss_scale_window": loss_scale_window}
        return {"fp16": {"enabled": True, **window}}
    if dtype == "bf16":
        return {"bf16": {"enabled": True}}
    return {}  # fp32: neither block; what a CPU should use


def get_train_ds_config(offload: bool, dtype: str, stage: int = 2, enable_hybrid_engine: bool = False,
                        inference_tp_size: int = 1, release_inference_cache: bool = False,
                        pin_parameters: bool = True, tp_gather_partition_size: int = 8,
                        max_out_tokens: int = 512, enable_tensorboard: bool = False,
                        enable_mixed_precision_lora: bool = False, tb_path: str = "",
                        tb_name: str = "", log_level: str | None = None) -> dict:
    """The training config; ``dtype`` is fp16, bf16 or (sftlib's addition, for CPUs) fp32.

    ``log_level="info"`` (sftlib's addition) brings back the ``step=...`` and throughput-timer lines
    that DeepSpeed printed by default in 2023 and hides behind WARNING today.
    """
    device = "cpu" if offload else "none"
    zero_opt_dict = {
        "stage": stage,
        "overlap_comm": True,
        "offload_param": {"device": device},
        "offload_optimizer": {"device": device},
        "stage3_param_persistence_threshold": 1e4,
        "stage3_max_live_parameters": 3e7,
        "stage3_prefetch_bucket_size": 3e7,
        "memory_efficient_linear": False,
    }
    if enable_mixed_precision_lora:
        zero_opt_dict["zero_quantized_nontrainable_weights"] = True
        zero_opt_dict["zero_hpz_partition_size"] = 8
    config = {
        "train_batch_size": GLOBAL_BATCH_SIZE,
        "train_micro_batch_size_per_gpu": MICRO_BATCH_SIZE,
        "steps_per_print": 10,
        "zero_optimization": zero_opt_dict,
        **_precision(dtype),
        "gradient_clipping": 1.0,
        "prescale_gradients": False,
        "wall_clock_breakdown": False,
        "hybrid_engine": {
            "enabled": enable_hybrid_engine,
            "max_out_tokens": max_out_tokens,
            "inference_tp_size": inference_tp_size,
            "release_inference_cache": release_inference_cache,
            "pin_parameters": pin_parameters,
            "tp_gather_partition_size": tp_gather_partition_size,
        },
        "tensorboard": {"enabled": enable_tensorboard, "output_path": f"{tb_path}/ds_tensorboard_logs/",
                        "job_name": f"{tb_name}_tensorboard"},
    }
    if log_level:
        config["log_level"] = log_level
    return config


def get_eval_ds_config(offload: bool, dtype: str, stage: int = 0) -> dict:
    """The config of the models DeepSpeed-Chat only runs forward: step 3's reference, EMA and reward models.

    (``dschat/rlhf/rlhf_engine.py``: ``_init_ref``, ``_init_ema``, ``_init_reward``; today's step-2 DPO
    script uses it for its reference model too.) No optimizer-side ZeRO fields, no hybrid engine.
    """
    device = "cpu" if offload else "none"
    return {
        "train_batch_size": GLOBAL_BATCH_SIZE,
        "train_micro_batch_size_per_gpu": MICRO_BATCH_SIZE,
        "steps_per_print": 10,
        "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 1e4,
                              "offload_param": {"device": device}, "memory_efficient_linear": False},
        **_precision(dtype, loss_scale_window=None),
        "gradient_clipping": 1.0,
        "prescale_gradients": False,
        "wall_clock_breakdown": False,
    }


NO_HYBRID_ACCELERATORS = ("cpu", "mps")  # DeepSpeed has no inference kernels for these


def check_hybrid_engine(config: dict, accelerator: str | None = None) -> None:
    """Raise ``SFTError`` when ``hybrid_engine.enabled`` is set on an accelerator without its kernels."""
    if not config.get("hybrid_engine", {}).get("enabled"):
        return
    if accelerator is None:
        accelerator = accelerator_name()
    if accelerator in NO_HYBRID_ACCELERATORS:
        raise SFTError(f"the hybrid engine needs a CUDA GPU (it runs generation in DeepSpeed's CUDA inference "
                       f"kernels) and this machine's accelerator is {accelerator!r}; set hybrid_engine.enabled "
                       f"to false (step 1 never uses it)")


BF16_MIN_CAPABILITY = (8, 0)  # Ampere and newer have bf16 tensor cores; a T4 (7.5) or a V100 (7.0) has none


def half_dtype(capability, rocm: bool = False) -> str:
    """``--dtype`` for a GPU of this compute capability: ``"bf16"`` from 8.0 (A100, L4, H100) and on ROCm,
    else ``"fp16"`` (T4, V100: no bf16 tensor cores)."""
    return "bf16" if rocm or tuple(capability)[:2] >= BF16_MIN_CAPABILITY else "fp16"


def gpu_dtype(device: int = 0) -> str:
    """``--dtype`` for training on this machine's CUDA GPU ``device``: ``half_dtype`` of its capability.

    Not ``torch.cuda.is_bf16_supported()`` as it is called by default: that counts emulation and says
    True on a T4. Raises ``SFTError`` without a CUDA GPU (a CPU trains in fp32)."""
    import torch

    if not torch.cuda.is_available():
        raise SFTError("gpu_dtype: torch sees no CUDA GPU (torch.cuda.is_available() is False); on a CPU use fp32")
    return half_dtype(torch.cuda.get_device_capability(device), rocm=bool(torch.version.hip))


def dtype_choice(device: int = 0) -> tuple[str, str]:
    """(``--dtype``, one line saying why) for this machine: fp32 without a CUDA GPU, else ``gpu_dtype``."""
    import torch

    if not torch.cuda.is_available():
        return "fp32", "no CUDA GPU, so fp32 (the same numbers on every CPU)"
    dtype = gpu_dtype(device)
    major, minor = torch.cuda.get_device_capability(device)
    gpu = f"{torch.cuda.get_device_name(device)}, compute capability {major}.{minor}"
    if dtype == "bf16":
        return dtype, f"{gpu}: bf16 (bf16 tensor cores; no loss scaling needed)"
    emulated = ", although torch.cuda.is_bf16_supported() says True: it counts emulation" \
        if torch.cuda.is_bf16_supported() else ""
    return dtype, f"{gpu}: fp16 with loss scaling (bf16 needs compute capability 8.0+{emulated})"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Print DeepSpeed-Chat's step-1 DeepSpeed config.")
    p.add_argument("--zero_stage", type=int, default=0)
    p.add_argument("--dtype", default="fp32", choices=("fp16", "bf16", "fp32"))
    p.add_argument("--offload", action="store_true")
    p.add_argument("--enable_hybrid_engine", action="store_true",
                   help="set hybrid_engine.enabled (refused where DeepSpeed has no inference kernels)")
    args = p.parse_args(argv)
    config = get_train_ds_config(offload=args.offload, dtype=args.dtype, stage=args.zero_stage,
                                 enable_hybrid_engine=args.enable_hybrid_engine)
    check_hybrid_engine(config)
    print(json.dumps(config, indent=2))


if __name__ == "__main__":
    run(main)
