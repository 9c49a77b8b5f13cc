"""sftlib.data.build: blending several sets, sft-only sets, and a build asked for by a BuildRequest."""

import torch

from sftlib import data
from sftlib.data.build import BuildRequest, build_prompt_datasets
from tests.data.helpers import write_jsonl


def word_rows(word, n):
    return [{"prompt": f"\n\nHuman: {word} {k}?\n\nAssistant:", "chosen": f" {word}."} for k in range(n)]


def word_sets(tmp_path, sizes):
    for word, n in sizes:
        write_jsonl(tmp_path / word / "train.jsonl", word_rows(word, n))
        write_jsonl(tmp_path / word / "eval.jsonl", word_rows(word, 10))


def test_blending_compat_is_by_size_and_weights_are_opt_in(tok, tmp_path):
    word_sets(tmp_path, (("alpha", 300), ("beta", 100)))
    paths = [f"local/json={tmp_path / 'alpha'}", f"local/json={tmp_path / 'beta'}"]

    def betas(**kw):
        train, _ = data.create_prompt_dataset(0, paths, "10,0,0", str(tmp_path / "c"), 1, 1, tok, 32,
                                              end_of_conversation_token=tok.eos_token, **kw)
        texts = [tok.decode(train[i]["input_ids"]) for i in range(len(train))]
        return len(train), sum("beta" in t for t in texts), texts

    n, b, texts = betas()
    assert (n, b) == (400, 100), "compat: every row of each set, in proportion to size"
    assert "beta" in "".join(texts[:40]), "then one seeded shuffle mixes the sets"
    n, b, _ = betas(data_weights=[1, 1])
    assert (n, b) == (400, 200), "weights 1:1 draw half the rows from the small set (repeating it)"


def test_sft_only_sets_skip_the_split_and_join_phase_1(tok, tmp_path):
    word_sets(tmp_path, (("alpha", 100), ("beta", 30)))
    train, evals = data.create_prompt_dataset(0, [str(tmp_path / "alpha")], "2,4,4", str(tmp_path / "c"), 1, 1, tok,
                                              32, end_of_conversation_token=tok.eos_token,
                                              sft_only_data_path=[str(tmp_path / "beta")])
    assert len(train) == 20 + 30 and len(evals) == 2 + 10  # alpha's phase-1 part + all of beta
    betas = sum("beta" in tok.decode(train[i]["input_ids"]) for i in range(len(train)))
    assert betas == 30 and "beta" in "".join(tok.decode(train[i]["input_ids"]) for i in range(25))


def test_build_request_builds_what_the_cache_holds(tok, tmp_path):
    word_sets(tmp_path, (("alpha", 40),))
    request = BuildRequest((str(tmp_path / "alpha"),), "2,4,4", str(tmp_path / "c"), 1, 3, 32, tok.eos_token)
    train, evals, stats = build_prompt_datasets(request, tok)
    assert (len(train), len(evals)) == (8, 2) and stats[f"{tmp_path / 'alpha'}:train"]["truncated"] == 0
    assert not list((tmp_path / "c").glob("prompt_dataset_*")), "no cache: only the split index files"
    cached, _ = data.create_prompt_dataset(0, [str(tmp_path / "alpha")], "2,4,4", str(tmp_path / "c"), 1, 3, tok, 32,
                                           end_of_conversation_token=tok.eos_token)
    assert len(cached) == len(train) and all(torch.equal(torch.tensor(ids), cached[i]["input_ids"][:len(ids)])
                                             for i, ids in enumerate(train["input_ids"]))


def test_a_blend_left_with_one_set_is_still_shuffled_as_in_the_original(tok, tmp_path):
    import numpy as np

    word_sets(tmp_path, (("alpha", 40), ("beta", 2)))  # beta's 20% phase-1 share of 2 rows rounds to none

    def texts(paths):
        train, _ = data.create_prompt_dataset(0, paths, "2,4,4", str(tmp_path / "c"), 1, 7, tok, 32,
                                              end_of_conversation_token=tok.eos_token)
        return [tok.decode(train[i]["input_ids"]) for i in range(len(train))]

    alone = texts([str(tmp_path / "alpha")])
    blended = texts([str(tmp_path / "alpha"), str(tmp_path / "beta")])
    order = np.arange(len(alone))
    np.random.RandomState(7).shuffle(order)  # DeepSpeed-Chat's get_shuffle_idx: two sets given, so shuffled
    assert len(alone) == 8 and blended == [alone[i] for i in order] and blended != alone


def test_a_local_path_named_like_a_hub_set_says_how_it_is_read(tmp_path, capsys):
    """Resolving prints and changes nothing; the check that uses the entry says it once (rank 0)."""
    from sftlib.data.check import print_notes

    folder = tmp_path / "mirror" / "openai" / "webgpt_comparisons"
    write_jsonl(folder / "train.jsonl", word_rows("w", 30))
    write_jsonl(folder / "eval.jsonl", word_rows("w", 3))
    resolved = data.resolve_data_path(str(folder))
    assert data.resolve_data_path(str(folder)) == resolved and capsys.readouterr().out == ""
    assert resolved.spec.name == "local/json" and f"openai/webgpt_comparisons={folder}" in resolved.note
    print_notes(data.check_data_paths([str(folder)], data_split="10,0,0"))
    out = capsys.readouterr().out
    assert out.count("note:") == 1 and f"openai/webgpt_comparisons={folder}" in out


def test_resolving_a_mapping_file_leaves_the_registry_alone(tmp_path):
    write_jsonl(tmp_path / "rows.jsonl", [{"q": "x?", "a": "y."}])
    mapping = {"name": "me/mapped", "prompt": "{q}", "chosen": " {a}", "eval_split": None, "source": "rows.jsonl"}
    (tmp_path / "mapped.json").write_text(__import__("json").dumps(mapping))
    before = dict(data.REGISTRY)
    resolved = data.resolve_data_path(str(tmp_path / "mapped.json"))
    assert resolved.spec.name == "me/mapped" and resolved.source == str(tmp_path / "rows.jsonl")
    assert data.REGISTRY == before and "me/mapped" not in data.REGISTRY
