"""sftlib.data.raw: the row transforms, rows skipped like the original's, and the local rank that
writes the 9:1 index files."""

from sftlib import data
from tests.data.helpers import FIX

WEBGPT = f"openai/webgpt_comparisons={FIX / 'openai_webgpt_comparisons'}"


def test_webgpt_tie_goes_to_answer_0_and_citations_are_stripped(tmp_path):
    raw = data.get_raw_dataset(WEBGPT, str(tmp_path), 1, 0)
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


def test_the_9_1_split_is_written_by_local_rank_0_only(tmp_path):
    other = data.get_raw_dataset(WEBGPT, str(tmp_path / "rank1"), 1, 1)
    first = data.get_raw_dataset(WEBGPT, str(tmp_path / "rank0"), 1, 0)
    assert other.local_rank == 1 and other.get_train_data()["question"] == first.get_train_data()["question"]
    assert not (tmp_path / "rank1").exists()
    assert len(list((tmp_path / "rank0").glob("openai_webgpt_comparisons_seed1_train_eval_9,1_*.npy"))) == 2
