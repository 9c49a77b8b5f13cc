"""What the sftlib.data tests share: fixture rows, a json-lines writer, a folder of distinct toy rows
and DeepSpeed-Chat's split recipe written independently from sftlib."""

import json
from pathlib import Path

import numpy as np

from sftlib.data import read_json_rows
from sftlib.lessons.toy import make_toy_rows
from tests.helpers import FIXTURES

FIX = Path(FIXTURES) / "datasets"  # rows in each registered set's real column layout


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def toy_folder(world, tmp_path, n_train, n_eval=20):
    """A folder with train.jsonl (``n_train`` distinct toy rows) and eval.jsonl; returns it and the train rows."""
    base = read_json_rows(world["data"] / "train.json")
    rows = make_toy_rows(base, n_train + n_eval)
    write_jsonl(tmp_path / "toy" / "train.jsonl", rows[:n_train])
    write_jsonl(tmp_path / "toy" / "eval.jsonl", rows[n_train:])
    return tmp_path / "toy", rows[:n_train]


def numpy_recipe(seed, data_split, n):
    """Written independently from sftlib: sizes by rounding, the first part absorbs the excess."""
    weights = np.array([float(x) for x in data_split.split(",")])
    sizes = [int(round(w / weights.sum() * n)) for w in weights]
    sizes[0] -= sum(sizes) - n
    order = np.random.RandomState(seed).permutation(n)
    cuts = np.cumsum([0] + sizes)
    return [order[cuts[i]:cuts[i + 1]] for i in range(len(sizes))]
