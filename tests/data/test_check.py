"""sftlib.data.check: every entry resolved once and read once per node; the build takes the check's result
and reads nothing again; the node's other ranks hash the bytes to the same cache key without parsing."""

import json

import pytest

from sftlib import data
from sftlib.errors import SFTError
from tests.data.helpers import toy_folder, write_jsonl


def test_the_build_reads_nothing_the_check_read(world, tok, tmp_path):
    folder, rows = toy_folder(world, tmp_path, 60)
    checked = data.check_data_paths([str(folder)], data_split="10,0,0")
    for f in folder.iterdir():  # the check holds the rows: the files may be gone
        f.unlink()
    train, evals = data.create_prompt_dataset(0, [str(folder)], "10,0,0", str(tmp_path / "c"), 1, 1234, tok, 64,
                                              end_of_conversation_token=tok.eos_token, checked_data=checked)
    assert (len(train), len(evals)) == (60, 20)
    assert tok.decode(train[0]["input_ids"][train[0]["attention_mask"].bool()]) in {
        tok.bos_token + r["prompt"] + r["chosen"] + tok.eos_token for r in rows}


def test_other_ranks_hash_the_bytes_to_the_readers_fingerprint_without_parsing(world, tmp_path):
    folder, _ = toy_folder(world, tmp_path, 30)
    (folder / "README.md").write_text("not rows, but part of the folder's fingerprint")
    single = write_jsonl(tmp_path / "one.jsonl", [{"prompt": f"q{i}", "chosen": f" a{i}"} for i in range(30)])
    entries = [str(folder), f"local/jsonfile={single}"]
    reader = data.check_data_paths(entries, data_split="10,0,0")
    other = data.check_data_paths(entries, data_split="10,0,0", read=False)
    assert all(s.splits is None and s.fingerprint is None for s in other.sets), "nothing read"
    assert [s.fingerprint for s in other.fingerprinted().sets] == [s.fingerprint for s in reader.sets]
    (folder / "README.md").write_text("changed")
    assert data.check_data_paths(entries, data_split="10,0,0").sets[0].fingerprint != reader.sets[0].fingerprint
    (folder / "train.jsonl").write_text('{"prompt": "a", "chosen": \n')  # a reader's error; others do not parse
    with pytest.raises(SFTError, match="train.jsonl:1: malformed json line"):
        data.check_data_paths(entries, data_split="10,0,0")
    data.check_data_paths(entries, data_split="10,0,0", read=False).fingerprinted()


def test_checked_data_is_for_the_entries_it_checked(world, tok, tmp_path):
    folder, _ = toy_folder(world, tmp_path, 30)
    checked = data.check_data_paths([str(folder)], data_split="10,0,0")
    with pytest.raises(SFTError, match="checked_data was made for other"):
        data.create_prompt_dataset(0, [str(folder)], "2,4,4", str(tmp_path / "c"), 1, 1234, tok, 64,
                                   checked_data=checked)


def test_a_hub_set_is_loaded_once_per_build(monkeypatch, tok, tmp_path):
    """The cache key needs the hub fingerprint and the build needs the rows: one load gives both."""
    import datasets

    from tests.data.helpers import FIX

    rows = {split: datasets.load_dataset("json", data_files=str(FIX / "Dahoas_rm-static" / f"{split}.jsonl"),
                                         split="train") for split in ("train", "test")}
    calls = []

    def load_dataset(name, config=None, **kwargs):
        calls.append((name, config))
        return datasets.DatasetDict(rows)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    train, _ = data.create_prompt_dataset(0, ["Dahoas/rm-static"], "10,0,0", str(tmp_path), 1, 1234, tok, 64)
    assert calls == [("Dahoas/rm-static", None)] and len(train) == len(rows["train"])
    data.create_prompt_dataset(0, ["Dahoas/rm-static"], "10,0,0", str(tmp_path), 1, 1234, tok, 64)
    assert len(calls) == 2, "a cache hit loads it once too (for its fingerprint), and builds nothing"


def test_data_weights_have_one_rule(world, tok, tmp_path):
    from sftlib.arguments import check_numbers, parse_args

    folder, _ = toy_folder(world, tmp_path, 30)
    for weights, message in (([1, 2], "has 2 weights for 1 --data_path"), ([-1], "must be non-negative"),
                             ([0], "are all zero"), ([float("nan")], "must be non-negative")):
        args = parse_args(["--model_name_or_path", "m", "--data_path", str(folder), "--data_weights",
                           *map(str, weights)])
        with pytest.raises(SFTError, match=message) as from_flags:
            check_numbers(args)
        with pytest.raises(SFTError, match=message) as from_library:
            data.create_prompt_dataset(0, [str(folder)], "10,0,0", str(tmp_path / "c"), 1, 1, tok, 64,
                                       data_weights=[float(w) for w in weights])
        assert str(from_flags.value) == str(from_library.value)
    assert not (tmp_path / "c").exists()


def test_the_old_keyword_names_still_work(world, tok, tmp_path):
    """blend_weights, pad_to_max_len and train_on_padding: the names before data_weights, batching and
    labels_2023, for callers not moved yet; an unknown keyword is still a TypeError."""
    args = (0, [str(world["data"])], "10,0,0", str(tmp_path), 1, 1, tok, 64)
    old, _ = data.create_prompt_dataset(*args, pad_to_max_len=False, train_on_padding=False, blend_weights=[1])
    new, _ = data.create_prompt_dataset(*args, batching="dynamic", labels_2023=False, data_weights=[1])
    assert old.batching == new.batching == "dynamic" and len(old) == len(new)
    assert all(json.dumps(old[i]["input_ids"].tolist()) == json.dumps(new[i]["input_ids"].tolist()) for i in range(8))
    with pytest.raises(TypeError, match="pad_to_max_length"):
        data.create_prompt_dataset(*args, pad_to_max_length=False)
