"""DeepSpeed configuration builders (``dschat/utils/ds_utils.py``): every field DeepSpeed-Chat sets.

Explained in notebooks/06_hybrid_engine_and_logs.ipynb.
"""

from __future__ import annotations

GLOBAL_BATCH_SIZE = 32  # placeholder; sftlib.train overwrites it from the micro batch and world size
MICRO_BATCH_SIZE = 4


def _precision(dtype: str) -> dict:
    if dtype == "fp16":
        return {"fp16": {"enabled": True, "loss_scale_window": 100}}
    if dtype == "bf16":
        return {"bf16": {"enabled": True}}
    return {}  # fp32: neither block; what a CPU should use


def get_train_ds_config(offload: bool, dtype: str, stage: int = 2, enable_hybrid_engine: bool = False,
                        inference_tp_size: int = 1, release_inference_cache: bool = False,
                        pin_parameters: bool = True, tp_gather_partition_size: int = 8,
                        max_out_tokens: int = 512, enable_tensorboard: bool = False,
                        enable_mixed_precision_lora: bool = False, tb_path: str = "",
                        tb_name: str = "") -> dict:
    """The training config; ``dtype`` is fp16, bf16 or (sftlib's addition, for CPUs) fp32."""
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
    return {
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


def get_eval_ds_config(offload: bool, dtype: str, stage: int = 0) -> dict:
    """The inference-side config DeepSpeed-Chat uses for reference and reward models."""
    device = "cpu" if offload else "none"
    return {
        "train_batch_size": GLOBAL_BATCH_SIZE,
        "train_micro_batch_size_per_gpu": MICRO_BATCH_SIZE,
        "steps_per_print": 10,
        "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 1e4,
                              "offload_param": {"device": device}, "memory_efficient_linear": False},
        **_precision(dtype),
        "gradient_clipping": 1.0,
        "prescale_gradients": False,
        "wall_clock_breakdown": False,
    }
