"""sftlib.data: DeepSpeed-Chat's splits and tensors reproduced, every registered set read from fixture
rows in its real column layout, the Arrow cache keyed on contents and shared safely by ranks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers import ROOT

from sftlib import collate, data
from sftlib.utils import SFTError

FIX = Path(ROOT) / "tests" / "fixtures" / "datasets"
HOT = "What is the opposite of hot?"
FUJI, FUJI_A = "富士山の高さは？", " 約3776メートルです。"
MOON, MOON_A = "月亮是什么颜色的？", " 白色的。"


@pytest.fixture(scope="module")
def tok(world):
    from sftlib.model import load_hf_tokenizer

    return load_hf_tokenizer(str(world["opt"]))


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def toy_folder(world, tmp_path, n_train, n_eval=20):
    base = data.read_json_rows(world["data"] / "train.json")
    rows = data.make_toy_rows(base, n_train + n_eval)
    write_jsonl(tmp_path / "toy" / "train.jsonl", rows[:n_train])
    write_jsonl(tmp_path / "toy" / "eval.jsonl", rows[n_train:])
    return tmp_path / "toy", rows[:n_train]


# ---------------------------------------------------------------- splits

def numpy_recipe(seed, data_split, n):
    """Written independently from sftlib: sizes by rounding, the first part absorbs the excess."""
    weights = np.array([float(x) for x in data_split.split(",")])
    sizes = [int(round(w / weights.sum() * n)) for w in weights]
    sizes[0] -= sum(sizes) - n
    order = np.random.RandomState(seed).permutation(n)
    cuts = np.cumsum([0] + sizes)
    return [order[cuts[i]:cuts[i + 1]] for i in range(len(sizes))]


@pytest.mark.parametrize("seed", [1234, 0, 42])
@pytest.mark.parametrize("data_split", ["2,4,4", "10,0,0", "1,1,1"])
def test_split_indices_equal_the_numpy_recipe(tmp_path, seed, data_split):
    for n in (1001, 7):
        ours = data.split_indices(seed, data_split, n)
        want = numpy_recipe(seed, data_split, n)
        assert [p.tolist() for p in ours] == [w.tolist() for w in want]
    got = data.get_raw_dataset_split_index(0, str(tmp_path), "Dahoas_rm_static", seed, "train", data_split, 1, 1001)
    assert got == want_part(seed, data_split, 1001, 1)
    for i in range(3):  # the original's index file names and contents
        f = tmp_path / f"Dahoas_rm_static_seed{seed}_train_{data_split}_{i}.npy"
        assert np.load(f).tolist() == want_part(seed, data_split, 1001, i)


def want_part(seed, data_split, n, i):
    return numpy_recipe(seed, data_split, n)[i].tolist()


# ---------------------------------------------------------------- compat tensors

def test_compat_tensors_equal_one_at_a_time_on_2000_rows(world, tok, tmp_path):
    folder, rows = toy_folder(world, tmp_path, 2000)
    max_len = 24  # short enough that some samples are truncated (their EOS is cut, as in the original)
    with pytest.warns(UserWarning, match=r"samples are longer than max_seq_len=24"):
        train, _ = data.create_prompt_dataset(0, [str(folder)], "10,0,0", str(tmp_path / "cache"), 1, 1234, tok,
                                              max_len, end_of_conversation_token=tok.eos_token)
    order = numpy_recipe(1234, "10,0,0", 2000)[0]
    texts = [rows[i]["prompt"] + rows[i]["chosen"] + tok.eos_token for i in order]
    want = data.tokenize_one_at_a_time(texts, tok, max_len)
    assert len(train) == 2000
    for i in range(2000):
        got = train[i]
        assert torch.equal(got["input_ids"], want[i]["input_ids"]), i
        assert torch.equal(got["attention_mask"], want[i]["attention_mask"]), i
        labels = want[i]["input_ids"].masked_fill(want[i]["attention_mask"] == 0, -100)
        assert torch.equal(got["labels"], labels) and got["input_ids"].dtype == torch.long


def test_phases_2_and_3_match_the_original_shapes(world, tok, tmp_path):
    folder, rows = toy_folder(world, tmp_path, 50)
    pairs, _ = data.create_prompt_dataset(0, [str(folder)], "2,4,4", str(tmp_path / "c"), 2, 7, tok, 32,
                                          end_of_conversation_token=tok.eos_token)
    part = numpy_recipe(7, "2,4,4", 50)[1]
    assert len(pairs) == len(part)
    c_ids, c_mask, r_ids, r_mask = pairs[0]
    want_c = tok(rows[part[0]]["prompt"] + rows[part[0]]["chosen"] + tok.eos_token, max_length=32,
                 padding="max_length", truncation=True, return_tensors="pt")
    want_r = tok(rows[part[0]]["prompt"] + rows[part[0]]["rejected"] + tok.eos_token, max_length=32,
                 padding="max_length", truncation=True, return_tensors="pt")
    assert torch.equal(c_ids, want_c["input_ids"]) and torch.equal(c_mask, want_c["attention_mask"])
    assert torch.equal(r_ids, want_r["input_ids"]) and torch.equal(r_mask, want_r["attention_mask"])
    prompts, _ = data.create_prompt_dataset(0, [str(folder)], "2,4,4", str(tmp_path / "c"), 3, 7, tok, 32,
                                            end_of_conversation_token=tok.eos_token)
    part3 = numpy_recipe(7, "2,4,4", 50)[2]
    ids, mask, pad = prompts[0]
    want = tok(rows[part3[0]]["prompt"], return_tensors="pt")["input_ids"][0]
    assert torch.equal(ids, want.flip(0)) and int(mask.sum()) == len(want) and pad == tok.pad_token_id


# ---------------------------------------------------------------- every registered dataset

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
    assert set(CASES) | {"local/json"} == set(data.REGISTRY)


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


def test_webgpt_tie_goes_to_answer_0_and_citations_are_stripped(tmp_path):
    raw = data.get_raw_dataset(f"openai/webgpt_comparisons={FIX / 'openai_webgpt_comparisons'}", str(tmp_path), 1, 0)
    rows = raw.raw_datasets["train"]
    assert rows[2]["score_0"] == rows[2]["score_1"] and raw.get_chosen(rows[2]) == " Four."
    assert "[" not in raw.get_chosen(rows[0]) and "(" not in raw.get_rejected(rows[0])


def test_sets_without_answers_skip_rows_like_the_original(tmp_path):
    sharegpt = "pvduy/sharegpt_alpaca_oa_vicuna_format"
    raw = data.get_raw_dataset(f"{sharegpt}={FIX / sharegpt.replace('/', '_')}", str(tmp_path), 1, 0)
    assert raw.get_prompt_and_chosen(raw.raw_datasets["train"][2]) is None  # empty label
    ja = data.get_raw_dataset(f"Cohere/miracl-ja-queries-22-12={FIX / 'Cohere_miracl-ja-queries-22-12'}",
                              str(tmp_path), 1, 0)
    assert ja.get_prompt_and_rejected(ja.raw_datasets["train"][1]) is None  # no negative passage


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


# ---------------------------------------------------------------- errors name the file, row or argument

@pytest.mark.parametrize("content, message", [
    ('{"prompt": "a", "chosen": "b"}\n{"prompt": "a", "chosen": \n', r"train.jsonl:2: malformed json line"),
    ('{"prompt": "a", "chosen": "b"}\n{"prompt": "a"}\n', r"train.jsonl:2: line is missing 'chosen'"),
    ('{"chosen": "b"}\n', r"train.jsonl:1: line is missing 'prompt'"),
    ("\n\n", r"train.jsonl: the dataset is empty"),
])
def test_bad_rows_name_file_and_line(tok, tmp_path, content, message):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.jsonl").write_text(content)
    write_jsonl(tmp_path / "d" / "eval.jsonl", [{"prompt": "a", "chosen": "b"}])
    with pytest.raises(SFTError, match=message):
        data.create_prompt_dataset(0, [str(tmp_path / "d")], "10,0,0", str(tmp_path / "c"), 1, 1, tok, 16)


@pytest.mark.parametrize("split, message", [
    ("2,4", "has 2 parts; it needs 3"), ("1,-1,2", "must not be negative"), ("0,0,0", "all zero"),
    ("a,b,c", "comma-separated numbers"),
])
def test_bad_data_split_names_the_argument(world, tok, tmp_path, split, message):
    with pytest.raises(SFTError, match=f"--data_split.*{message}"):
        data.create_prompt_dataset(0, [str(world["data"])], split, str(tmp_path), 1, 1, tok, 16)


def test_unknown_dataset_lists_the_known_ones(tok, tmp_path):
    with pytest.raises(SFTError, match=r"unknown dataset 'Dahoas/rm-statc'.*Dahoas/rm-static.*lmqg/qag_jaquad"):
        data.create_prompt_dataset(0, ["Dahoas/rm-statc"], "2,4,4", str(tmp_path), 1, 1, tok, 16)


def test_hub_name_offline_says_how_to_give_a_local_copy(tok, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SFTError, match=r"--data_path Dahoas/rm-static=/path/to"):
        data.create_prompt_dataset(0, ["Dahoas/rm-static"], "2,4,4", str(tmp_path), 1, 1, tok, 16)


# ---------------------------------------------------------------- cache

def cache_dirs(path):
    return sorted(p for p in Path(path).glob("prompt_dataset_*") if p.is_dir())


def test_cache_is_arrow_and_keyed_on_contents_tokenizer_and_eos(world, tok, tmp_path):
    folder, _ = toy_folder(world, tmp_path, 100)
    cache = tmp_path / "cache"
    args = (0, [str(folder)], "10,0,0", str(cache), 1, 1234, tok, 32)
    a, _ = data.create_prompt_dataset(*args, end_of_conversation_token=tok.eos_token)
    files = [p.name for p in cache.rglob("*") if p.is_file()]
    assert any(f.endswith(".arrow") for f in files) and not any(f.endswith((".pt", ".pkl", ".pickle")) for f in files)
    data.create_prompt_dataset(*args, end_of_conversation_token=tok.eos_token)
    assert len(cache_dirs(cache)) == 1, "same inputs: the cache is reused"
    rows = data.read_json_rows(folder / "train.jsonl")
    rows[0]["chosen"] = " something else entirely."
    write_jsonl(folder / "train.jsonl", rows)  # same path, same size of list: only the contents changed
    b, _ = data.create_prompt_dataset(*args, end_of_conversation_token=tok.eos_token)
    assert len(cache_dirs(cache)) == 2
    assert any(not torch.equal(a[i]["input_ids"], b[i]["input_ids"]) for i in range(len(a)))
    data.create_prompt_dataset(*args, end_of_conversation_token="<|endoftext|>")
    assert len(cache_dirs(cache)) == 3, "another end-of-conversation token: another key"
    from sftlib.model import load_hf_tokenizer

    tok2 = load_hf_tokenizer(str(world["opt"]), add_special_tokens="<|endoftext|>")
    data.create_prompt_dataset(0, [str(folder)], "10,0,0", str(cache), 1, 1234, tok2, 32,
                               end_of_conversation_token=tok2.eos_token)
    assert len(cache_dirs(cache)) == 4, "an added token: another key"


def test_truncated_cache_is_detected_and_rebuilt(world, tok, tmp_path):
    folder, _ = toy_folder(world, tmp_path, 60)
    args = (0, [str(folder)], "10,0,0", str(tmp_path / "cache"), 1, 1, tok, 32)
    good, _ = data.create_prompt_dataset(*args, end_of_conversation_token=tok.eos_token)
    want = [good[i]["input_ids"] for i in range(len(good))]
    arrow = next(cache_dirs(tmp_path / "cache")[0].rglob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    with pytest.warns(UserWarning, match="damaged.*rebuilding"):
        again, _ = data.create_prompt_dataset(*args, end_of_conversation_token=tok.eos_token)
    assert len(again) == len(want) and all(torch.equal(x, again[i]["input_ids"]) for i, x in enumerate(want))
    assert data.cache_problem(cache_dirs(tmp_path / "cache")[0]) is None


RANK_SCRIPT = """
import hashlib, os, sys
from sftlib import data
from sftlib.model import load_hf_tokenizer
tok = load_hf_tokenizer(sys.argv[1])
train, evals = data.create_prompt_dataset(int(os.environ["RANK"]), [sys.argv[2]], "10,0,0", sys.argv[3], 1, 1234,
                                          tok, 32, end_of_conversation_token=tok.eos_token)
h = hashlib.sha256()
for ds in (train, evals):
    for i in range(len(ds)):
        h.update(ds[i]["input_ids"].numpy().tobytes())
print("DIGEST", len(train), h.hexdigest(), flush=True)
"""


def test_two_ranks_cold_cache_build_once_and_agree(world, tmp_path):
    folder, _ = toy_folder(world, tmp_path, 3000)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, WORLD_SIZE="2", HF_HUB_OFFLINE="1")
    procs = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(world["opt"]), str(folder),
                               str(tmp_path / "cache")], env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (1, 0)]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    digests = [next(line for line in o.splitlines() if line.startswith("DIGEST")) for o in outs]
    assert digests[0] == digests[1] and " 3000 " in digests[0]
    builds = sum(o.count("built dataset cache") for o in outs)
    assert builds == 1 and "built dataset cache" in outs[1], "rank 0 built it, once"
    assert len(cache_dirs(tmp_path / "cache")) == 1


def test_rank_1_sees_rank_0_failure_instead_of_hanging(tmp_path):
    folder = tmp_path / "prompt_dataset_x"
    Path(f"{folder}.failed").write_text("rank 0 could not build the dataset cache: boom")
    with pytest.raises(SFTError, match="boom"):
        data.wait_for_cache(folder, poll_s=0.01)


# ---------------------------------------------------------------- blending

def word_rows(word, n):
    return [{"prompt": f"\n\nHuman: {word} {k}?\n\nAssistant:", "chosen": f" {word}."} for k in range(n)]


def test_blending_compat_is_by_size_and_weights_are_opt_in(tok, tmp_path):
    for word, n in (("alpha", 300), ("beta", 100)):
        write_jsonl(tmp_path / word / "train.jsonl", word_rows(word, n))
        write_jsonl(tmp_path / word / "eval.jsonl", word_rows(word, 10))
    paths = [f"local/json={tmp_path / 'alpha'}", f"local/json={tmp_path / 'beta'}"]

    def betas(**kw):
        train, _ = data.create_prompt_dataset(0, paths, "10,0,0", str(tmp_path / "c"), 1, 1, tok, 32,
                                              end_of_conversation_token=tok.eos_token, **kw)
        texts = [tok.decode(train[i]["input_ids"]) for i in range(len(train))]
        return len(train), sum("beta" in t for t in texts), texts

    n, b, texts = betas()
    assert (n, b) == (400, 100), "compat: every row of each set, in proportion to size"
    assert "beta" in "".join(texts[:40]), "then one seeded shuffle mixes the sets"
    n, b, _ = betas(blend_weights=[1, 1])
    assert (n, b) == (400, 200), "weights 1:1 draw half the rows from the small set (repeating it)"


# ---------------------------------------------------------------- opt-in improvements

def test_mask_prompt_labels_only_the_response(world, tok, tmp_path):
    train, _ = data.create_prompt_dataset(0, [str(world["data"])], "10,0,0", str(tmp_path), 1, 1234, tok, 64,
                                          end_of_conversation_token=tok.eos_token, mask_prompt=True)
    rows = data.read_json_rows(world["data"] / "train.json")
    first = rows[int(numpy_recipe(1234, "10,0,0", len(rows))[0][0])]
    s = train[0]
    kept = s["labels"][s["labels"] != -100]
    assert tok.decode(kept) == first["chosen"] + tok.eos_token
    assert int((s["labels"] != -100).sum()) < int(s["attention_mask"].sum())


def test_dynamic_padding_pads_to_a_multiple_of_8_and_keeps_content(world, tok, tmp_path):
    kw = dict(end_of_conversation_token=tok.eos_token)
    compat, _ = data.create_prompt_dataset(0, [str(world["data"])], "10,0,0", str(tmp_path), 1, 1, tok, 64, **kw)
    dyn, _ = data.create_prompt_dataset(0, [str(world["data"])], "10,0,0", str(tmp_path), 1, 1, tok, 64,
                                        pad_to_max_len=False, **kw)
    batch = collate.DynamicPaddingCollator(tok.pad_token_id)([dyn[i] for i in range(16)])
    longest = max(int(compat[i]["attention_mask"].sum()) for i in range(16))
    assert batch["input_ids"].shape == (16, -(-longest // 8) * 8) and batch["input_ids"].shape[1] < 64
    width = batch["input_ids"].shape[1]
    for i in range(16):
        assert torch.equal(batch["input_ids"][i], compat[i]["input_ids"][:width])
        assert torch.equal(batch["labels"][i], compat[i]["labels"][:width])


def test_packing_keeps_attention_inside_each_sample(world, tok, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(world["opt"])).eval()
    dyn, _ = data.create_prompt_dataset(0, [str(world["data"])], "10,0,0", str(tmp_path), 1, 1, tok, 64,
                                        end_of_conversation_token=tok.eos_token, pad_to_max_len=False)
    packed = collate.PackedDataset(dyn, 64)
    assert len(packed) < len(dyn) and len(packed.bins[0]) >= 2
    batch = collate.PackingCollator(tok.pad_token_id)([packed[0], packed[1]])
    assert batch.pop("num_tokens") == sum(len(packed[i]["input_ids"]) for i in (0, 1))
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        start = 0
        for j in packed.bins[0]:
            ids = dyn[j]["input_ids"][None]
            alone = model(input_ids=ids).logits[0]
            n = ids.shape[1]
            assert torch.allclose(logits[0, start:start + n], alone, atol=1e-4), "a sample saw its neighbour"
            assert batch["labels"][0, start] == -100
            start += n


def test_sft_only_sets_skip_the_split_and_join_phase_1(tok, tmp_path):
    for word, n in (("alpha", 100), ("beta", 30)):
        write_jsonl(tmp_path / word / "train.jsonl", word_rows(word, n))
        write_jsonl(tmp_path / word / "eval.jsonl", word_rows(word, 10))
    train, evals = data.create_prompt_dataset(0, [str(tmp_path / "alpha")], "2,4,4", str(tmp_path / "c"), 1, 1, tok,
                                              32, end_of_conversation_token=tok.eos_token,
                                              sft_only_data_path=[str(tmp_path / "beta")])
    assert len(train) == 20 + 30 and len(evals) == 2 + 10  # alpha's phase-1 part + all of beta
    betas = sum("beta" in tok.decode(train[i]["input_ids"]) for i in range(len(train)))
    assert betas == 30 and "beta" in "".join(tok.decode(train[i]["input_ids"]) for i in range(25))
