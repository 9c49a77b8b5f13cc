"""sftlib.data.sources: bad rows and unreachable hub sets fail with one line naming what to fix."""

import pytest

from sftlib import data
from sftlib.errors import SFTError
from tests.data.helpers import write_jsonl


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


def test_hub_name_offline_says_how_to_give_a_local_copy(tok, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SFTError, match=r"--data_path Dahoas/rm-static=/path/to"):
        data.create_prompt_dataset(0, ["Dahoas/rm-static"], "2,4,4", str(tmp_path), 1, 1, tok, 16)
