"""The toy world: deterministic data in DeepSpeed-Chat's schema, a tokenizer, loadable models."""

import pytest
import torch

from sftlib.lessons import toy


def test_dataset_is_deterministic_and_in_schema():
    train, evalset = toy.make_dataset()
    assert (train, evalset) == toy.make_dataset()
    assert len(evalset) >= 200
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in evalset}, "eval prompts are held out"
    for r in train + evalset:
        assert r["prompt"].startswith("\n\nHuman: ") and r["prompt"].endswith("\n\nAssistant:")
        assert r["chosen"].startswith(" ") and r["rejected"].startswith(" ")
        assert r["chosen"] == r["response"] and r["chosen"] != r["rejected"]
    families = {r["family"] for r in train}
    assert {"capital", "opposite_zh", "opposite", "color", "successor"} <= families
    assert any("反义词" in r["prompt"] for r in train)


def test_pretraining_prose_has_no_chat_turns():
    docs = toy.pretraining_documents(epochs=1)
    assert docs and not any("Human:" in d or "Assistant:" in d for d in docs)


def test_models_load_like_hub_folders(world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for kind, model_type in (("opt", "opt"), ("llama", "llama")):
        tok = AutoTokenizer.from_pretrained(world[kind])
        model = AutoModelForCausalLM.from_pretrained(world[kind])
        assert model.config.model_type == model_type
        text = "\n\nHuman: 安多国的首都是哪里？\n\nAssistant:"
        assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text
        assert model.get_input_embeddings().weight.shape[0] % 8 == 0
    assert AutoTokenizer.from_pretrained(world["llama"]).pad_token is None, "like Llama-2: no pad token"


def test_build_is_cached(world, tmp_path):
    stamp = (world["opt"] / "toy_world.json").stat().st_mtime
    assert toy.ensure_toy_world(("opt",))["opt"] == world["opt"]
    assert (world["opt"] / "toy_world.json").stat().st_mtime == stamp


def test_chat_family_needs_the_first_turn_and_is_built_apart(world):
    import json

    from sftlib.lessons import toy_chat

    train, evalset = toy_chat.chat_split(toy.SEED, toy.EVAL_FRACTION)
    assert (train, evalset) == toy_chat.chat_split(toy.SEED, toy.EVAL_FRACTION) and len(train) % 16 == 0
    assert not {json.dumps(r) for r in train} & {json.dumps(r) for r in evalset}
    for r in train + evalset:
        roles = [m["role"] for m in r["messages"]]
        assert roles[-4:] == ["user", "assistant", "user", "assistant"] and roles[:-4] in ([], ["system"])
        follow = r["messages"][-2]["content"]
        assert follow.startswith("And ")  # answerable only with the first turn
    assert any(r["messages"][0]["role"] == "system" for r in train)
    on_disk = [json.loads(line) for line in open(world["chat"] / "train.json")]
    assert on_disk == train and (world["chat"] / "chat_template.jinja").read_text() == toy_chat.CHAT_TEMPLATE
    # the instruction set and the models are untouched: no chat turns, no template on the toy tokenizers
    assert not any("messages" in r for r in toy.load_rows(world["train"]))
    assert not (world["opt"] / "chat_template.jinja").exists()


@pytest.mark.slow
def test_messages_train_on_two_ranks_with_zero3_and_reload_with_the_template(world, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftlib.dist import free_port
    from tests.helpers import DEEPSPEED, run_cli, toy_train_args

    out = tmp_path / "model"
    argv = toy_train_args(world, tmp_path, data_path=f"messages={world['chat']}", max_seq_len=96, zero_stage=3,
                          chat_template=world["chat"] / "chat_template.jinja", per_device_train_batch_size=8,
                          dynamic_padding=True, learning_rate="1e-3")
    proc = run_cli([DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), "--module", "sftlib.train", *argv])
    assert proc.returncode == 0, proc.stderr[-3000:]
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == (world["chat"] / "chat_template.jinja").read_text()
    model = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(world["opt"])
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), base.state_dict().values()))
    chat = [{"role": "user", "content": "What number comes after 7?"}]
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert model.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] > ids["input_ids"].shape[1]
