"""sftlib.data.cache: Arrow, keyed on contents, tokenizer and end-of-conversation token, rebuilt when
damaged, built once by rank 0 and shared safely with the other ranks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sftlib import data
from sftlib.errors import ReportedElsewhere, SFTError
from tests.data.helpers import toy_folder, write_jsonl
from tests.helpers import ROOT


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


def test_a_waiting_rank_sees_this_jobs_failure_ignores_stale_ones_and_gives_up_in_time(tmp_path):
    import json
    import time

    folder = tmp_path / "prompt_dataset_x"
    marker = Path(f"{folder}.failed")
    marker.write_text(json.dumps({"run_id": "job-2", "error": "local rank 0 could not build the dataset cache: boom"}))
    with pytest.raises(SFTError, match="boom") as info:
        data.wait_for_cache(folder, poll_s=0.01, run_id="job-2")
    assert isinstance(info.value, ReportedElsewhere), "the builder reports it, this rank stays quiet"
    t0 = time.time()  # a marker an earlier job left: waited past, until the bounded wait ends, naming the folder
    with pytest.raises(SFTError, match=f"gave up after 0.3 s .* {folder}; .*--data_cache_timeout") as info:
        data.wait_for_cache(folder, poll_s=0.01, timeout_s=0.3, run_id="job-3")
    assert not isinstance(info.value, ReportedElsewhere) and time.time() - t0 < 5
    with pytest.raises(SFTError, match="gave up"):  # without a job id: only a marker newer than the wait counts
        data.wait_for_cache(folder, poll_s=0.01, timeout_s=0.2)


def test_a_stale_failure_marker_never_fails_a_new_build(world, tok, tmp_path):
    folder, _ = toy_folder(world, tmp_path, 40)
    cache = tmp_path / "cache"
    cache.mkdir()
    args = (0, [str(folder)], "10,0,0", str(cache), 1, 1, tok, 32)
    key_folder = data.create_prompt_dataset(*args, end_of_conversation_token=tok.eos_token)  # learn the folder
    built = cache_dirs(cache)[0]
    import shutil

    shutil.rmtree(built)
    Path(f"{built}.failed").write_text("rank 0 could not build the dataset cache: an old failure")
    train, _ = data.create_prompt_dataset(*args, end_of_conversation_token=tok.eos_token)
    assert len(train) == len(key_folder[0]) and not Path(f"{built}.failed").exists()
