"""sftlib.lessons.hybrid_engine: refused in one sentence on a CPU before anything loads; on a GPU it runs."""

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


@pytest.mark.skipif(ON_CPU, reason="the hybrid engine's inference kernels need a CUDA GPU")
def test_trains_one_step_then_generates_on_a_gpu(world, capsys):
    engine, text = hybrid_engine.run_hybrid_engine(get_train_ds_config(offload=False, dtype="fp16",
                                                                       enable_hybrid_engine=True), str(world["opt"]))
    assert type(engine).__name__ == "DeepSpeedHybridEngine"
    assert "What is the opposite of hot?" in text, "generate returns the prompt and what follows it"
    hybrid_engine.main(["--model_name_or_path", str(world["opt"]), "--max_new_tokens", "4"])
    assert capsys.readouterr().out.startswith("DeepSpeedHybridEngine generated: ")
