"""The toy world: deterministic data in DeepSpeed-Chat's schema, a tokenizer, loadable models."""

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
