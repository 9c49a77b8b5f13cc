"""sftlib.ds_config: DeepSpeed-Chat's fields, and the hybrid engine refused on a CPU in one sentence."""

import json
import sys

import pytest
from deepspeed.runtime.config import DeepSpeedConfig

from sftlib.ds_config import check_hybrid_engine, get_eval_ds_config, get_train_ds_config, main
from sftlib.errors import SFTError
from tests.helpers import run_cli


def test_train_config_has_deepspeed_chat_fields():
    config = get_train_ds_config(offload=True, dtype="fp16", stage=3)
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_optimizer"] == {"device": "cpu"}
    assert zero["stage3_param_persistence_threshold"] == 1e4 and zero["stage3_prefetch_bucket_size"] == 3e7
    assert config["fp16"] == {"enabled": True, "loss_scale_window": 100} and config["gradient_clipping"] == 1.0
    assert set(config["hybrid_engine"]) == {"enabled", "max_out_tokens", "inference_tp_size",
                                            "release_inference_cache", "pin_parameters", "tp_gather_partition_size"}
    assert "log_level" not in config and get_train_ds_config(False, "fp32", log_level="info")["log_level"] == "info"
    fp32 = get_train_ds_config(offload=False, dtype="fp32")
    assert "fp16" not in fp32 and "bf16" not in fp32
    assert "hybrid_engine" not in get_eval_ds_config(offload=False, dtype="bf16")
    assert get_eval_ds_config(offload=False, dtype="fp16")["fp16"] == {"enabled": True}  # as DeepSpeed-Chat's


def with_batch(config):
    return {**config, "train_batch_size": 4, "train_micro_batch_size_per_gpu": 4}


def test_deepspeed_parses_the_hybrid_engine_block_as_written():
    config = get_train_ds_config(offload=False, dtype="fp32", enable_hybrid_engine=True, inference_tp_size=2,
                                 release_inference_cache=True, pin_parameters=False, tp_gather_partition_size=4,
                                 max_out_tokens=256)
    parsed = DeepSpeedConfig(with_batch(config)).hybrid_engine  # what deepspeed.initialize reads
    assert {key: getattr(parsed, key) for key in config["hybrid_engine"]} == config["hybrid_engine"]
    assert parsed.enabled and parsed.enable_cuda_graph is False  # a field DeepSpeed-Chat never sets
    assert DeepSpeedConfig(with_batch(get_train_ds_config(offload=False, dtype="fp32"))).hybrid_engine.enabled is False
    fp16 = DeepSpeedConfig(with_batch(get_train_ds_config(offload=False, dtype="fp16"))).float16_config
    assert fp16.enabled and fp16.loss_scale_window == 100 and fp16.hysteresis == 2 and fp16.initial_scale_power == 16


def test_hybrid_engine_refused_on_cpu_only():
    enabled = get_train_ds_config(offload=False, dtype="fp32", enable_hybrid_engine=True)
    with pytest.raises(SFTError, match="needs a CUDA GPU .* accelerator is 'cpu'"):
        check_hybrid_engine(enabled, accelerator="cpu")
    check_hybrid_engine(enabled, accelerator="cuda")
    check_hybrid_engine(get_train_ds_config(offload=False, dtype="fp32"), accelerator="cpu")


def test_cli_prints_the_config(capsys):
    main(["--zero_stage", "3", "--dtype", "bf16", "--offload"])
    config = json.loads(capsys.readouterr().out)
    assert config == get_train_ds_config(offload=True, dtype="bf16", stage=3)


def test_cli_on_cpu_prints_one_sentence_and_exits_nonzero():
    # run_cli launches it on the CPU, on a GPU host too
    proc = run_cli([sys.executable, "-m", "sftlib.ds_config", "--enable_hybrid_engine"])
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the hybrid engine needs a CUDA GPU"), proc.stderr


@pytest.fixture()
def gpu(monkeypatch):
    """A CUDA GPU as torch reports it, simulated: set its name and compute capability."""
    import torch

    state = {"name": "NVIDIA H200", "capability": (9, 0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: state["capability"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: state["name"])
    monkeypatch.setattr(torch.version, "hip", None)
    # torch's own check, as it runs on a GPU: major >= 8, else (by default) emulation, which a T4 has
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True:
                        state["capability"][0] >= 8 or including_emulation)
    return state


@pytest.mark.parametrize("name, capability, expected", [("Tesla T4", (7, 5), "fp16"), ("Tesla V100", (7, 0), "fp16"),
                                                        ("NVIDIA A100", (8, 0), "bf16"), ("NVIDIA L4", (8, 9), "bf16"),
                                                        ("NVIDIA H200", (9, 0), "bf16")])
def test_gpu_dtype_is_bf16_only_from_compute_capability_8(gpu, name, capability, expected):
    from sftlib.ds_config import dtype_choice, gpu_dtype, half_dtype

    gpu.update(name=name, capability=capability)
    assert gpu_dtype() == half_dtype(capability) == expected
    dtype, why = dtype_choice()
    assert dtype == expected and why.startswith(f"{name}, compute capability {capability[0]}.{capability[1]}: {dtype}")
    if expected == "fp16":  # torch's default check would have said bf16 here
        assert "bf16 needs compute capability 8.0+" in why and "is_bf16_supported() says True" in why
    assert half_dtype((7, 5), rocm=True) == "bf16"


def test_without_a_gpu_the_choice_is_fp32_and_gpu_dtype_refuses(monkeypatch):
    import torch

    from sftlib.ds_config import dtype_choice, gpu_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dtype_choice() == ("fp32", "no CUDA GPU, so fp32 (the same numbers on every CPU)")
    with pytest.raises(SFTError, match="no CUDA GPU .* on a CPU use fp32"):
        gpu_dtype()
