"""sftlib.data.registry: every registered set read from fixture rows in its real column layout; user
mappings; unknown names."""

import json

import pytest

from sftlib import data
from sftlib.data.registry import get_field, render, row_keys
from sftlib.errors import SFTError
from tests.data.helpers import FIX, write_jsonl

HOT = "What is the opposite of hot?"
FUJI, FUJI_A = "富士山の高さは？", " 約3776メートルです。"
MOON, MOON_A = "月亮是什么颜色的？", " 白色的。"

CASES = {  # name: (fixture folder, train row, prompt, chosen, rejected)
    "Dahoas/rm-static": ("Dahoas_rm-static", 0, f"\n\nHuman: {HOT}\n\nAssistant:", " Cold.", " Warm soup."),
    "Dahoas/full-hh-rlhf": ("Dahoas_full-hh-rlhf", 0, f"\n\nHuman: {HOT}\n\nAssistant:", " Cold.", " Warm soup."),
    "Dahoas/synthetic-instruct-gptj-pairwise": ("Dahoas_synthetic-instruct-gptj-pairwise", 0,
                                                f" Human: {HOT} Assistant:", " Cold.", " Warm soup."),
    "yitingxie/rlhf-reward-datasets": ("yitingxie_rlhf-reward-datasets", 0, f"\n\nHuman: {HOT}\n\nAssistant:",
                                       " Cold.", " Warm soup."),
    "openai/webgpt_comparisons": ("openai_webgpt_comparisons", 1, " Human: Name a primary colour. Assistant:",
                                  " Table.", " Red."),
    "stanfordnlp/SHP": ("stanfordnlp_SHP", 1, " Human: Name a primary colour. Assistant:", " Red.", " Table."),
    "pvduy/sharegpt_alpaca_oa_vicuna_format": ("pvduy_sharegpt_alpaca_oa_vicuna_format", 0,
                                               f"Human: {HOT} Assistant:", " Cold.", None),
    "wangrui6/Zhihu-KOL": ("wangrui6_Zhihu-KOL", 0, f" Human: {MOON} Assistant:", MOON_A, None),
    "Cohere/miracl-zh-queries-22-12": ("Cohere_miracl-zh-queries-22-12", 0, f" Human: {MOON} Assistant:", MOON_A,
                                       " 绿色的。"),
    "Hello-SimpleAI/HC3-Chinese": ("Hello-SimpleAI_HC3-Chinese", 0, f" Human: {MOON} Assistant:", MOON_A, None),
    "mkqa-Chinese": ("mkqa", 0, f" Human: {MOON} Assistant:", MOON_A, None),
    "mkqa-Japanese": ("mkqa", 0, f" Human: {FUJI} Assistant:", FUJI_A, None),
    "Cohere/miracl-ja-queries-22-12": ("Cohere_miracl-ja-queries-22-12", 1, " Human: 日本の首都は？ Assistant:",
                                       " 東京です。", None),
    "lmqg/qg_jaquad": ("lmqg_qg_jaquad", 0, f" Human: {FUJI} Assistant:", FUJI_A, None),
    "lmqg/qag_jaquad": ("lmqg_qag_jaquad", 0, f" Human: {FUJI} Assistant:", FUJI_A + "これは段落です。", None),
    "local/jsonfile": ("local_jsonfile", 0, f" Human: {HOT} Assistant:", " Cold.", " Warm soup."),
}


def test_every_registered_dataset_has_a_fixture_case():
    assert set(CASES) | {"local/json", "messages"} == set(data.REGISTRY)  # messages: tests/data/test_messages.py


@pytest.mark.parametrize("name", sorted(CASES))
def test_registered_dataset_reads_its_real_layout(name, tok, tmp_path):
    folder, i, prompt, chosen, rejected = CASES[name]
    raw = data.get_raw_dataset(f"{name}={FIX / folder}", str(tmp_path), 1234, 0)
    row = raw.raw_datasets[raw.spec.train_split][i]
    assert raw.get_prompt(row) == prompt and raw.get_chosen(row) == chosen
    assert raw.get_rejected(row) == rejected
    assert raw.get_prompt_and_chosen(row) == prompt + chosen
    n_train, n_eval = len(raw.get_train_data()), len(raw.get_eval_data())
    assert n_train > 0 and n_eval > 0
    if raw.spec.eval_split is None:  # 9:1 split of train, with the original's index file names
        assert (tmp_path / f"{raw.dataset_name_clean}_seed1234_train_eval_9,1_0.npy").is_file()
    train, evals = data.create_prompt_dataset(0, [f"{name}={FIX / folder}"], "10,0,0", str(tmp_path), 1, 1234, tok,
                                              64, end_of_conversation_token=tok.eos_token)
    usable = sum(raw.get_prompt_and_chosen(r) is not None for r in raw.get_train_data())
    assert len(train) == usable > 0 and len(evals) > 0


def test_templates_read_nested_fields_and_name_their_row_keys():
    row = {"q": "x?", "a": [{"text": "y."}]}
    assert render(" Human: {q} Assistant: {a.0.text}", row) == " Human: x? Assistant: y."
    assert render("{a.1.text}", row) is None and get_field(row, "a.-1.text") == "y."
    assert row_keys(["{q}{a.0.text}", None, "{_derived}"], extra=("q", "labels")) == ["q", "a", "labels"]


def test_user_mapping_file_adds_a_dataset_without_code(tok, tmp_path):
    write_jsonl(tmp_path / "rows" / "train.jsonl", [{"q": f"question {i}?", "a": {"text": f"answer {i}."}}
                                                   for i in range(30)])
    mapping = {"name": "me/my-set", "prompt": "\n\nHuman: {q}\n\nAssistant:", "chosen": " {a.text}",
               "eval_split": None, "source": "rows"}
    (tmp_path / "my-set.json").write_text(json.dumps(mapping))
    raw = data.get_raw_dataset(str(tmp_path / "my-set.json"), str(tmp_path), 1, 0)
    assert raw.get_prompt_and_chosen({"q": "x?", "a": {"text": "y."}}) == "\n\nHuman: x?\n\nAssistant: y."
    train, evals = data.create_prompt_dataset(0, [str(tmp_path / "my-set.json")], "10,0,0", str(tmp_path / "c"), 1,
                                              1, tok, 32, end_of_conversation_token=tok.eos_token)
    assert (len(train), len(evals)) == (27, 3)


def test_unknown_dataset_lists_the_known_ones(tok, tmp_path):
    with pytest.raises(SFTError, match=r"unknown dataset 'Dahoas/rm-statc'.*Dahoas/rm-static.*lmqg/qag_jaquad"):
        data.create_prompt_dataset(0, ["Dahoas/rm-statc"], "2,4,4", str(tmp_path), 1, 1, tok, 16)
