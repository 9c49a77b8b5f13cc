"""sftlib.lessons.hybrid_engine: refused in one sentence on a CPU before anything loads, and on a CUDA machine
before DeepSpeed starts where the pinned transformers cannot take DeepSpeed's inference layer (simulated here)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from sftlib.cli import run
from sftlib.dist import accelerator_name
from sftlib.ds_config import NO_HYBRID_ACCELERATORS, get_train_ds_config
from sftlib.errors import SFTError
from sftlib.lessons import hybrid_engine

ON_CPU = accelerator_name() in NO_HYBRID_ACCELERATORS  # a CPU (or mps): no inference kernels


def test_inference_blocks_are_deepspeeds_policy_lookup(world):
    for name, layer, policy in (("opt", "OPTDecoderLayer", "HFOPTLayerPolicy"),
                                ("llama", "LlamaDecoderLayer", "LLAMALayerPolicy")):
        model = AutoModelForCausalLM.from_pretrained(world[name])
        assert hybrid_engine.inference_blocks(model) == {layer: (policy, model.config.num_hidden_layers)}
    assert hybrid_engine.inference_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2))) == {}, "no transformer block"


@pytest.mark.skipif(not ON_CPU, reason="a CUDA machine runs the hybrid engine instead")
def test_refused_on_cpu_before_any_model_loads():
    config = get_train_ds_config(offload=False, dtype="fp32", enable_hybrid_engine=True)
    with pytest.raises(SFTError, match="needs a CUDA GPU .* accelerator is 'cpu'"):
        hybrid_engine.run_hybrid_engine(config, "no/such/model")  # loading it would raise OSError


@pytest.mark.skipif(not ON_CPU, reason="a CUDA machine runs the hybrid engine instead")
def test_cli_on_cpu_prints_one_sentence_and_exits_2(capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)  # cli.run prints on rank 0 only
    with pytest.raises(SystemExit) as exited:
        run(hybrid_engine.main, ["--model_name_or_path", "no/such/model"])
    out, err = capsys.readouterr()
    assert exited.value.code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: the hybrid engine needs a CUDA GPU"), err


@pytest.fixture()
def cuda_simulated(monkeypatch):
    """A CUDA machine as the lesson's checks see it, on which DeepSpeed must never start (nor compile)."""
    import deepspeed
    from deepspeed.ops.op_builder import InferenceBuilder

    import sftlib.ds_config

    def never(*args, **kwargs):
        raise AssertionError("DeepSpeed started: the refusal came too late")

    monkeypatch.setattr(sftlib.ds_config, "accelerator_name", lambda: "cuda")
    monkeypatch.setattr(deepspeed, "initialize", never)
    monkeypatch.setattr(InferenceBuilder, "load", never)  # the nvcc build of the inference kernels
    monkeypatch.setattr(hybrid_engine, "init_distributed", never)
    monkeypatch.delenv("RANK", raising=False)  # cli.run prints on rank 0 only


def test_pinned_opt_is_refused_in_one_line_on_a_cuda_machine(world, capsys, cuda_simulated):
    import deepspeed
    import transformers

    with pytest.raises(SystemExit) as exited:
        run(hybrid_engine.main, ["--model_name_or_path", str(world["opt"])])
    out, err = capsys.readouterr()
    assert exited.value.code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: the hybrid engine cannot run OPTDecoderLayer with transformers "
                          f"{transformers.__version__} and deepspeed {deepspeed.__version__}: "), err
    assert "cache_position or past_key_values" in err and "transformers<=5.18 works" in err
    assert "Traceback" not in err and "AttributeError" not in err


def test_the_probe_tells_tensor_decoders_from_tuple_decoders(world):
    """DeepSpeed's tuple return breaks OPT and Llama (each layer's output goes on as a tensor), not GPT-Neo
    (its decoder takes element 0 of each block's tuple); the model's own forward is back afterwards."""
    from transformers import GPTNeoConfig

    for name in ("opt", "llama"):
        model = AutoModelForCausalLM.from_pretrained(world[name]).eval()
        ids = torch.tensor([[5, 6, 7]])
        before = model(input_ids=ids).logits
        assert hybrid_engine.tuple_breaks(model, hybrid_engine.inference_blocks(model))
        assert torch.equal(model(input_ids=ids).logits, before), "the blocks' own forward restored"
        with pytest.raises(SFTError, match="cannot run .*DecoderLayer"):
            hybrid_engine.check_injection(model)
    neo = AutoModelForCausalLM.from_config(GPTNeoConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2,
                                                        attention_types=[[["global"], 2]], bos_token_id=0,
                                                        eos_token_id=0))
    assert hybrid_engine.inference_blocks(neo) == {"GPTNeoBlock": ("HFGPTNEOLayerPolicy", 2)}
    assert not hybrid_engine.tuple_breaks(neo, {"GPTNeoBlock"})
    hybrid_engine.check_injection(neo)  # nothing to refuse: DeepSpeed's tuples fit this decoder


@pytest.mark.skipif(ON_CPU, reason="the hybrid engine's inference kernels need a CUDA GPU")
def test_on_a_gpu_it_generates_or_refuses_before_deepspeed_starts(world, capsys):
    config = get_train_ds_config(offload=False, dtype="fp16", enable_hybrid_engine=True)
    model = AutoModelForCausalLM.from_pretrained(world["opt"])
    if hybrid_engine.tuple_breaks(model, hybrid_engine.inference_blocks(model)):  # the pinned versions
        with pytest.raises(SFTError, match="cannot run OPTDecoderLayer"):
            hybrid_engine.run_hybrid_engine(config, str(world["opt"]))
        return
    engine, text = hybrid_engine.run_hybrid_engine(config, str(world["opt"]))
    assert type(engine).__name__ == "DeepSpeedHybridEngine"
    assert "What is the opposite of hot?" in text, "generate returns the prompt and what follows it"
    hybrid_engine.main(["--model_name_or_path", str(world["opt"]), "--max_new_tokens", "4"])
    assert capsys.readouterr().out.startswith("DeepSpeedHybridEngine generated: ")
