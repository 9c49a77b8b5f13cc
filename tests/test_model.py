"""sftlib.model: tokenizer loading (local folders, hub ids), model creation, vocab rounding, dropout."""

import json
import math
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, OPTConfig

from sftlib import model as M
from sftlib.errors import SFTError

TEXT = "\n\nHuman: What is the opposite of hot?\n\nAssistant: cold</s>"


def copy_folder(src, dst, drop=()):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*drop))
    return dst


# ---------------------------------------------------------------- tokenizer

def test_local_folder_tokenizer_with_and_without_config_json(world, tmp_path):
    with_cfg = M.load_hf_tokenizer(str(world["opt"]))
    bare = copy_folder(world["opt"], tmp_path / "bare", drop=("config.json", "*.safetensors"))
    without = M.load_hf_tokenizer(str(bare))
    assert without(TEXT).input_ids == with_cfg(TEXT).input_ids
    assert len(without) == len(with_cfg) > 1000
    for tok in (with_cfg, without):  # DeepSpeed-Chat's non-Llama recipe: pad = EOS, right padding
        assert tok.pad_token == tok.eos_token == "</s>" and tok.padding_side == "right"


def test_llama_gets_a_pad_token_and_extra_special_tokens(world):
    tok = M.load_hf_tokenizer(str(world["llama"]))
    assert tok.pad_token == "[PAD]" and tok.pad_token_id == len(tok) - 1 and tok.eos_token == "</s>"
    tok = M.load_hf_tokenizer(str(world["opt"]), add_special_tokens="<|endoftext|>")
    ids = tok("a<|endoftext|>", add_special_tokens=False).input_ids
    assert ids[-1] == tok.convert_tokens_to_ids("<|endoftext|>"), "one token, not split into pieces"


def test_hub_id_goes_through_transformers_and_offline_names_the_id(world, monkeypatch):
    import transformers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SFTError, match=r"'facebook/opt-1\.3b' is not a local folder.*offline"):
        M.load_hf_tokenizer("facebook/opt-1.3b")
    with pytest.raises(SFTError, match=r"--model_name_or_path \./no/such/folder: no such model folder"):
        M.load_hf_tokenizer("./no/such/folder")

    seen = []
    real = transformers.AutoTokenizer.from_pretrained

    def resolver(name, **kwargs):  # stands in for the hub: records what transformers was asked
        seen.append((name, kwargs))
        return real(str(world["opt"]))

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", resolver)
    tok = M.load_hf_tokenizer("facebook/opt-1.3b", fast_tokenizer=False)
    assert seen == [("facebook/opt-1.3b", {"use_fast": False, "trust_remote_code": False})]
    assert tok.pad_token == tok.eos_token


def test_tokenizer_without_pad_or_eos_is_a_clear_error(world, tmp_path):
    folder = copy_folder(world["opt"], tmp_path / "noeos", drop=("*.safetensors",))
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    for key in ("eos_token", "pad_token", "bos_token"):
        cfg.pop(key, None)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(SFTError, match="neither an EOS nor a pad token"):
        M.load_hf_tokenizer(str(folder))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SFTError, match="holds no tokenizer files"):
        M.load_hf_tokenizer(str(empty))


# ---------------------------------------------------------------- config errors

@pytest.mark.parametrize("config, message", [
    ({"model_type": "foobar", "architectures": ["FooForCausalLM"]}, r"model_type 'foobar'.* does not know"),
    ({"model_type": "foobar", "auto_map": {"AutoConfig": "foo.FooConfig"}}, "trust_remote_code=True"),
    ({"model_type": "t5"}, "model_type 't5' has no AutoModelForCausalLM class"),
])
def test_unusable_config_is_a_clear_error(world, tmp_path, config, message):
    folder = copy_folder(world["opt"], tmp_path / "m", drop=("*.safetensors",))
    (folder / "config.json").write_text(json.dumps(config))
    tok = M.load_hf_tokenizer(str(world["opt"]))
    with pytest.raises(SFTError, match=message):
        M.create_hf_model(AutoModelForCausalLM, str(folder), tok)


def test_hub_model_offline_names_the_id(world, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = M.load_hf_tokenizer(str(world["opt"]))
    with pytest.raises(SFTError, match="'facebook/opt-1.3b' is not a local folder"):
        M.create_hf_model(AutoModelForCausalLM, "facebook/opt-1.3b", tok)


# ---------------------------------------------------------------- vocabulary rounding

@pytest.mark.parametrize("tok_len, current, expected", [
    (1738, 1744, 1744), (1745, 1744, 1752), (1744, 1744, 1744), (100, 1744, 1744), (1, 0, 8)])
def test_padded_vocab_size(tok_len, current, expected):
    assert M.padded_vocab_size(tok_len, current) == expected


def test_create_hf_model_rounds_up_to_8_and_never_shrinks(world, tmp_path):
    extra = [f"<extra_{i}>" for i in range(7)]  # with [PAD]: 8 new tokens, past the 1744 rows
    tok = M.load_hf_tokenizer(str(world["llama"]), add_special_tokens=extra)
    base = AutoModelForCausalLM.from_pretrained(world["llama"]).get_input_embeddings().weight.shape[0]
    model = M.create_hf_model(AutoModelForCausalLM, str(world["llama"]), tok)
    rows = model.get_input_embeddings().weight.shape[0]
    assert len(tok) > base and rows == 8 * math.ceil(len(tok) / 8) and rows % 8 == 0 and rows > len(tok)
    assert model.lm_head.weight.shape[0] == rows, "the untied output layer grew too"

    big = tmp_path / "big-vocab"  # a model whose vocabulary is larger than its tokenizer
    wide = AutoModelForCausalLM.from_pretrained(world["opt"])
    wide.resize_token_embeddings(1800)
    wide.save_pretrained(big)
    opt_tok = M.load_hf_tokenizer(str(world["opt"]))
    model = M.create_hf_model(AutoModelForCausalLM, str(big), opt_tok)
    assert len(opt_tok) < 1744 < 1800
    assert model.get_input_embeddings().weight.shape[0] == 1800, "the original would shrink it to 1744"
    assert model.config.end_token_id == opt_tok.eos_token_id and model.config.pad_token_id == model.config.eos_token_id


# ---------------------------------------------------------------- dropout

def test_dropout_override_covers_every_dropout_key():
    assert M.configure_dropout(OPTConfig(), None) == []
    opt, llama, gpt2 = OPTConfig(layerdrop=0.05), LlamaConfig(), GPT2Config()
    assert sorted(M.configure_dropout(opt, 0.3)) == ["attention_dropout", "dropout"]
    assert opt.dropout == opt.attention_dropout == 0.3 and opt.layerdrop == 0.05, "layerdrop is not dropout"
    assert M.configure_dropout(llama, 0.3) == ["attention_dropout"] and llama.attention_dropout == 0.3
    keys = M.configure_dropout(gpt2, 0.0)
    assert {"resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout"} <= set(keys)
    assert all(getattr(gpt2, k) == 0.0 for k in keys)


def test_create_hf_model_applies_dropout_to_the_built_model(world):
    tok = M.load_hf_tokenizer(str(world["opt"]))
    model = M.create_hf_model(AutoModelForCausalLM, str(world["opt"]), tok, dropout=0.25)
    assert model.config.dropout == 0.25 and model.dtype == torch.float32
    model.train()
    ids = torch.tensor([tok(TEXT).input_ids])
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=ids).logits
    assert not torch.equal(a, b), "dropout is active in training mode"
