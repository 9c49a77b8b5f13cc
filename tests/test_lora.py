"""sftlib.lora: DeepSpeed-Chat's LoRA is PEFT's LoRA, fuses and unfuses exactly, exports, trains, fails clearly."""

import copy
import json
import sys

import pytest
import torch
from torch import nn

from sftlib import lora
from sftlib.constants import is_lora_name
from sftlib.errors import SFTError
from tests.helpers import run_cli

MODULES = {"opt": "decoder.layers.", "llama": "layers."}


def load(world, kind):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(world[kind]), dtype=torch.float32).eval()


def randomise_lora(model, seed=0, std=0.05):
    """Give every LoRA matrix non-zero values (a fresh conversion has L = 0, so it changes nothing)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if is_lora_name(name) or ".lora_A." in name or ".lora_B." in name:
            p.data = torch.randn(p.shape, generator=g) * std
    return model


def ids(n=2, length=16, vocab=1000, seed=0):
    return torch.randint(4, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def logits(model, x):
    with torch.no_grad():
        return model(input_ids=x).logits


def test_layer_shapes_init_and_scaling():
    torch.manual_seed(0)
    base = nn.Linear(64, 48)
    layer = lora.LinearLayer_LoRA(base.weight, lora_dim=8, lora_scaling=2, bias=base.bias)
    assert layer.lora_right_weight.shape == (64, 8) and layer.lora_left_weight.shape == (8, 48)
    assert layer.lora_scaling == 2 / 8
    assert not layer.weight.requires_grad and layer.lora_right_weight.requires_grad
    assert torch.all(layer.lora_left_weight == 0)
    assert layer.lora_right_weight.abs().max() <= 1 / 8 ** 0.5  # kaiming_uniform(a=sqrt(5)), fan-in = r
    x = torch.randn(3, 64)
    assert torch.equal(layer(x), base(x)), "a fresh LoRA layer is the base layer"
    nn.init.normal_(layer.lora_left_weight)
    expected = x @ base.weight.T + base.bias + (x @ layer.lora_right_weight @ layer.lora_left_weight) * 0.25
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("kind", ["opt", "llama"])
def test_same_weights_as_peft_give_the_same_outputs(world, kind):
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    base = load(world, kind)
    ours = lora.convert_linear_layer_to_lora(copy.deepcopy(base), MODULES[kind], lora_dim=4, lora_scaling=2)
    targets = [n for n, _ in lora.lora_layers(ours)]
    assert len(targets) == 4 * (6 if kind == "opt" else 7)
    # DeepSpeed-Chat scales by lora_scaling / r, PEFT by lora_alpha / r: alpha = lora_scaling
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=2, target_modules=targets)).eval()
    randomise_lora(theirs, seed=1)
    peft_state = get_peft_model_state_dict(theirs)
    lora.load_lora_from_peft(ours, peft_state)
    some = targets[0]
    a = peft_state[f"base_model.model.{some}.lora_A.weight"]
    assert torch.equal(lora.recursive_getattr(ours, some).lora_right_weight, a.T), "PEFT's A is our right, transposed"
    x = ids()
    diff = (logits(ours, x) - logits(theirs, x)).abs().max().item()
    assert diff < 1e-5
    assert (logits(ours, x) - logits(base, x)).abs().max().item() > 1e-2, "the update is not negligible"


@pytest.mark.parametrize("kind", ["opt", "llama"])
def test_fuse_equals_unfused_and_unfuse_restores(world, kind):
    base = load(world, kind)
    model = randomise_lora(lora.convert_linear_layer_to_lora(copy.deepcopy(base), MODULES[kind], 8))
    x = ids()
    before = logits(model, x)
    model64 = copy.deepcopy(model).double()
    exact = logits(model64, x)  # the fp32 model's own rounding error is the floor
    floor = (before.double() - exact).abs().max().item()
    q = model.model.layers[0].self_attn.q_proj if kind == "llama" else model.model.decoder.layers[0].self_attn.q_proj
    w0 = q.weight.detach().clone()
    lora.convert_lora_to_linear_layer(model)
    assert q.fuse_lora and (q.weight - w0).abs().max() > 1e-3
    diff = (logits(model, x) - before).abs().max().item()
    assert diff < max(1e-5, 2 * floor), (diff, floor)  # OPT: about 6e-6; Llama: about 1.1e-5, its floor 1.2e-5
    lora.convert_lora_to_linear_layer(model64)
    assert (logits(model64, x) - exact).abs().max().item() < 1e-10, "in fp64 fusing is exact"
    lora.convert_lora_to_linear_layer(model)  # fusing twice changes nothing
    assert (logits(model, x) - before).abs().max().item() == diff
    lora.unfuse_lora_weight(model)
    assert not q.fuse_lora
    reference = dict(base.named_parameters())
    for name, p in model.named_parameters():
        if not is_lora_name(name):
            assert (p - reference[name]).abs().max().item() < 1e-6, name
    assert (logits(model, x) - before).abs().max().item() < max(1e-5, 2 * floor)


def test_fused_save_loads_in_plain_transformers(world, tmp_path):
    from transformers import AutoModelForCausalLM

    from sftlib.save import write_hf_folder

    model = randomise_lora(lora.convert_linear_layer_to_lora(load(world, "llama"), "layers.", 8))
    lora.convert_lora_to_linear_layer(model)
    write_hf_folder(model, {k: v for k, v in model.state_dict().items() if not is_lora_name(k)}, None, tmp_path / "m")
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"), dtype=torch.float32).eval()
    assert not any(is_lora_name(n) for n, _ in plain.named_parameters())
    x = ids()
    assert torch.equal(logits(plain, x), logits(model, x))


def test_exported_peft_adapter_reproduces_outputs(world, tmp_path):
    from peft import PeftModel

    model = randomise_lora(lora.convert_linear_layer_to_lora(load(world, "opt"), "decoder.layers.", 8))
    x = ids()
    expected = logits(model, x)
    lora.export_peft_adapter(model, "toy_world/opt-tiny", tmp_path / "adapter", base_model_path=world["opt"])
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 1 and cfg["base_model_name_or_path"] == "toy_world/opt-tiny"
    peft_model = PeftModel.from_pretrained(load(world, "opt"), str(tmp_path / "adapter")).eval()
    assert (logits(peft_model, x) - expected).abs().max().item() < 1e-5
    model.resize_token_embeddings(cfg_vocab := model.config.vocab_size + 8)
    with pytest.warns(UserWarning, match=f"resize_token_embeddings\\({cfg_vocab}\\)"):
        lora.export_peft_adapter(model, "toy_world/opt-tiny", tmp_path / "resized", base_model_path=world["opt"])
    lora.convert_lora_to_linear_layer(model)
    with pytest.raises(SFTError, match="unfuse"):
        lora.export_peft_adapter(model, "toy_world/opt-tiny", tmp_path / "again")


def test_exported_adapter_names_a_base_its_user_can_load(world, tmp_path, monkeypatch):
    """The config carries the name as given (a hub id or a relative path), never this machine's absolute path."""
    from peft import AutoPeftModelForCausalLM

    model = randomise_lora(lora.convert_linear_layer_to_lora(load(world, "opt"), "decoder.layers.", 8))
    expected = logits(model, ids())
    with pytest.raises(SFTError, match="absolute path") as err:
        lora.export_peft_adapter(model, str(world["opt"]), tmp_path / "absolute")
    assert f"base_model_path={str(world['opt'])!r}" in str(err.value) and not (tmp_path / "absolute").exists()
    monkeypatch.chdir(world["opt"].parent)  # where the user stands: the base is a relative folder there
    lora.export_peft_adapter(model, world["opt"].name, tmp_path / "adapter")
    written = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert written == world["opt"].name
    reloaded = AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "adapter"), dtype=torch.float32).eval()
    assert (logits(reloaded, ids()) - expected).abs().max().item() < 1e-5  # the base found from the config alone


def test_gpt2_conv1d_layers_are_converted_not_skipped(tmp_path):
    from peft import PeftModel
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0)
    base = GPT2LMHeadModel(cfg).eval()
    model = lora.convert_linear_layer_to_lora(copy.deepcopy(base), "h.", 4)
    converted = lora.lora_layers(model)
    assert len(converted) == 8 and all(m.fan_in_fan_out for _, m in converted)
    assert not any(isinstance(m, Conv1D) for m in model.modules())
    randomise_lora(model)
    x = ids(vocab=100)
    out = logits(model, x)
    base.save_pretrained(tmp_path / "base")
    lora.export_peft_adapter(model, "base", tmp_path / "ad", base_model_path=tmp_path / "base")
    assert json.loads((tmp_path / "ad" / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    reloaded = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(tmp_path / "base"), tmp_path / "ad").eval()
    assert (logits(reloaded, x) - out).abs().max().item() < 1e-5
    lora.convert_lora_to_linear_layer(model)
    assert (logits(model, x) - out).abs().max().item() < 1e-5


def test_selection_errors_name_the_fix(world):
    model = load(world, "llama")
    with pytest.raises(SFTError) as err:
        lora.convert_linear_layer_to_lora(model, "decoder.layers.", 8)  # OPT's name on a Llama
    assert "'model.layers.' (28 layers)" in str(err.value) and "'lm_head' (1 layer)" in str(err.value)
    with pytest.raises(SFTError, match="embed_tokens \\(Embedding\\)"):
        lora.convert_linear_layer_to_lora(model, "embed", 8)
    with pytest.raises(SFTError, match="--lora_dim 200 is larger than layer model.layers.0"):
        lora.convert_linear_layer_to_lora(model, "layers.", 200)
    with pytest.raises(SFTError, match="--lora_dim must be > 0"):
        lora.convert_linear_layer_to_lora(model, "layers.", 0)
    with pytest.raises(SFTError, match="no LoRA parameters"):
        lora.only_optimize_lora_parameters(model)
    assert not lora.lora_layers(model), "a refused conversion changes nothing"
    with pytest.raises(SFTError, match="shares its weight with the input embedding"):
        lora.convert_linear_layer_to_lora(load(world, "opt"), "", 8)  # OPT's lm_head is tied


def test_only_optimize_lora_parameters(world):
    model = lora.only_optimize_lora_parameters(lora.convert_linear_layer_to_lora(load(world, "opt"), "layers.", 8))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(is_lora_name(n) for n in trainable)
    counts = lora.count_parameters(model)
    assert counts["trainable"] == 16 * 8 * (128 + 128) + 8 * 8 * (128 + 512)  # 16 attention, 8 MLP layers


class TinyCheckpointed(nn.Module):
    """An embedding, two checkpointed blocks and a head: what a HF model looks like to torch.utils.checkpoint."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.layers = nn.ModuleList([nn.Sequential(nn.Linear(16, 16), nn.Tanh()) for _ in range(2)])
        self.head = nn.Linear(16, 20)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, x, checkpointed):
        from torch.utils.checkpoint import checkpoint

        h = self.embed(x)
        for block in self.layers:
            h = checkpoint(block, h, use_reentrant=True) if checkpointed else block(h)
        return self.head(h).logsumexp(-1).mean()


def test_reentrant_checkpointing_with_a_frozen_base_needs_input_grads():
    torch.manual_seed(0)
    model = lora.convert_linear_layer_to_lora(TinyCheckpointed(), "layers.", 4)
    model = randomise_lora(lora.only_optimize_lora_parameters(model))
    x = torch.randint(0, 20, (3, 5))
    model(x, checkpointed=False).backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="does not require grad"):
        model(x, checkpointed=True).backward()  # DeepSpeed-Chat users' cryptic failure
    lora.make_model_gradient_checkpointing_compatible(model)
    model(x, checkpointed=True).backward()
    for name, grad in reference.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad)


def test_zero3_fuse_unfuse_and_export_match_plain(world):
    import deepspeed

    from sftlib.dist import init_distributed
    from sftlib.ds_config import get_train_ds_config

    init_distributed()
    plain = randomise_lora(lora.convert_linear_layer_to_lora(load(world, "opt"), "decoder.layers.", 32))
    x = ids()
    expected = logits(plain, x)
    config = get_train_ds_config(offload=False, dtype="fp32", stage=3)
    config.update(train_micro_batch_size_per_gpu=1, train_batch_size=1)
    engine, *_ = deepspeed.initialize(model=copy.deepcopy(plain), config=config)
    q = engine.module.model.decoder.layers[0].self_attn.q_proj
    assert q.weight.ds_shape == (128, 128) and q.weight.numel() == 0, "the weight is partitioned"
    fc1 = engine.module.model.decoder.layers[0].fc1
    assert fc1.lora_left_weight.ds_shape == (32, 512) and fc1.lora_left_weight.numel() == 0, "so is a big LoRA matrix"
    assert (logits(engine, x) - expected).abs().max().item() < 1e-5
    state, _ = lora.lora_state_for_peft(engine)
    reference, _ = lora.lora_state_for_peft(plain)
    assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in state)
    lora.convert_lora_to_linear_layer(engine)
    lora.convert_lora_to_linear_layer(plain)
    assert (logits(engine, x) - expected).abs().max().item() < 1e-5
    with deepspeed.zero.GatheredParameters([q.weight]):
        assert (q.weight - plain.model.decoder.layers[0].self_attn.q_proj.weight).abs().max().item() < 1e-6
    lora.unfuse_lora_weight(engine)
    assert (logits(engine, x) - expected).abs().max().item() < 1e-5


def lora_args(world, kind, out, *extra):
    return ["--model_name_or_path", str(world[kind]), "--data_path", str(world["data"]), "--data_split", "10,0,0",
            "--max_seq_len", "48", "--per_device_train_batch_size", "16", "--num_train_epochs", "1",
            "--dtype", "fp32", "--lora_dim", "8", "--lora_module_name", MODULES[kind], "--only_optimize_lora",
            "--lora_learning_rate", "1e-2", "--gradient_checkpointing", "--data_output_path", str(out / "data"),
            *extra]


def test_lora_only_sft_trains_opt_zero0(world, tmp_path):
    from sftlib.train import main

    history = main(lora_args(world, "opt", tmp_path))
    assert sum(history["loss"][-5:]) / 5 < 0.7 * history["loss"][0]
    assert history["eval"][-1]["loss"] < history["eval"][0]["loss"]


def test_lora_only_sft_trains_llama_zero3_and_saves_fused(world, tmp_path):
    from safetensors.torch import load_file

    proc = run_cli([sys.executable, "-m", "sftlib.train",
                    *lora_args(world, "llama", tmp_path, "--zero_stage", "3", "--output_dir", str(tmp_path / "m"))])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    history = json.loads((tmp_path / "m" / "training_history.json").read_text())
    assert sum(history["loss"][-5:]) / 5 < 0.7 * history["loss"][0]
    saved, base = load_file(tmp_path / "m" / "model.safetensors"), load_file(world["llama"] / "model.safetensors")
    assert not any(is_lora_name(k) for k in saved)
    assert torch.equal(saved["model.embed_tokens.weight"], base["model.embed_tokens.weight"]), "frozen: unchanged"
    assert not torch.equal(saved["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"]), "the LoRA update is fused in"


@pytest.mark.parametrize("extra, message", [
    (("--lora_module_name", "decoder.layers."), "matches no nn.Linear or Conv1D layer of LlamaForCausalLM"),
    (("--lora_dim", "0"), "--only_optimize_lora needs --lora_dim > 0"),
    (("--lora_dim", "500"), "--lora_dim 500 is larger than layer"),
])
def test_train_refuses_bad_lora_arguments(world, tmp_path, extra, message):
    from sftlib.train import main

    args = lora_args(world, "llama", tmp_path)
    args[args.index(extra[0]) + 1] = extra[1]
    with pytest.raises(SFTError, match=message):
        main(args)
