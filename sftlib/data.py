"""DeepSpeed-Chat's dataset abstraction (``dschat/utils/data/``): raw sets, splits, prompt datasets.

Phase 1 (SFT) turns each row into ``prompt + chosen + EOS``, tokenized and padded to
``max_seq_len``; labels are the input ids with padding set to -100, so the loss covers prompt and
response, as in the original.

Explained in notebooks/01_dataset_abstraction.ipynb.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from sftlib.utils import SFTError


# --------------------------------------------------------------------------------------------
# Raw datasets
# --------------------------------------------------------------------------------------------

class PromptRawDataset:
    """Base class: one dataset's train/eval rows and how to read prompt, chosen and rejected."""

    dataset_name = "base"
    dataset_name_clean = "base"

    def __init__(self, output_path: str, seed: int, local_rank: int, dataset_name: str):
        self.output_path, self.seed, self.local_rank = output_path, seed, local_rank
        self.raw_datasets = None

    def get_train_data(self):
        raise NotImplementedError

    def get_eval_data(self):
        raise NotImplementedError

    def get_prompt(self, sample):
        raise NotImplementedError

    def get_chosen(self, sample):
        raise NotImplementedError

    def get_rejected(self, sample):
        raise NotImplementedError

    def get_prompt_and_chosen(self, sample):
        raise NotImplementedError

    def get_prompt_and_rejected(self, sample):
        raise NotImplementedError


def read_json_rows(path: str | os.PathLike, required=("prompt", "chosen")) -> list[dict]:
    """Rows of a json-lines file or a json list; errors name the file and line to fix."""
    path = Path(path)
    if not path.is_file():
        raise SFTError(f"data file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise SFTError(f"{path}:{e.lineno}: malformed json ({e.msg})") from None
        numbered = list(enumerate(rows, start=1))
        where = "row"
    else:
        numbered = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise SFTError(f"{path}:{lineno}: malformed json line ({e.msg})") from None
        where = "line"
    for n, row in numbered:
        if not isinstance(row, dict):
            raise SFTError(f"{path}:{n}: each {where} must be a json object")
        missing = [k for k in required if k not in row]
        if missing:
            raise SFTError(f"{path}:{n}: {where} is missing {', '.join(repr(m) for m in missing)}")
    if not numbered:
        raise SFTError(f"{path}: the dataset is empty")
    return [row for _, row in numbered]


def _find_split_file(folder: Path, split: str) -> Path:
    for name in (f"{split}.json", f"{split}.jsonl"):
        if (folder / name).is_file():
            return folder / name
    raise SFTError(f"data folder {folder} has no {split}.json or {split}.jsonl")


class LocalJsonFileDataset(PromptRawDataset):
    """``local/jsonfile``: a folder with ``train.json`` and ``eval.json`` (json or json lines).

    Rows use DeepSpeed-Chat's schema: ``prompt`` (already in the ``Human: ... Assistant:`` form)
    and ``chosen``/``rejected`` (starting with a space).
    """

    dataset_name = "local/jsonfile"
    dataset_name_clean = "jsonfile"

    def __init__(self, output_path, seed, local_rank, dataset_name, chat_path):
        super().__init__(output_path, seed, local_rank, dataset_name)
        folder = Path(chat_path)
        if not folder.exists():
            raise SFTError(f"data path {folder} does not exist")
        if not folder.is_dir():
            raise SFTError(f"data path {folder} must be a folder holding train.json and eval.json")
        self.raw_datasets = {split: read_json_rows(_find_split_file(folder, split))
                             for split in ("train", "eval")}

    def get_train_data(self):
        return self.raw_datasets["train"]

    def get_eval_data(self):
        return self.raw_datasets["eval"]

    def get_prompt(self, sample):
        return sample.get("prompt")

    def get_chosen(self, sample):
        return sample.get("chosen")

    def get_rejected(self, sample):
        return sample.get("rejected")

    def get_prompt_and_chosen(self, sample):
        if sample.get("prompt") is None or sample.get("chosen") is None:
            return None
        return sample["prompt"] + sample["chosen"]

    def get_prompt_and_rejected(self, sample):
        if sample.get("prompt") is None or sample.get("rejected") is None:
            return None
        return sample["prompt"] + sample["rejected"]


def get_raw_dataset(dataset_name: str, output_path: str, seed: int, local_rank: int) -> PromptRawDataset:
    """The raw dataset for ``dataset_name``: a local folder in DeepSpeed-Chat's json schema."""
    if os.path.exists(dataset_name):
        return LocalJsonFileDataset(output_path, seed, local_rank, "local/jsonfile", dataset_name)
    raise SFTError(f"unknown dataset {dataset_name!r}: pass a folder holding train.json and eval.json")


# --------------------------------------------------------------------------------------------
# Splits (phases 1/2/3 share one seeded permutation)
# --------------------------------------------------------------------------------------------

def parse_data_split(data_split: str, parts: int = 3) -> list[float]:
    """``"2,4,4"`` -> ``[0.2, 0.4, 0.4]``; errors name the argument."""
    try:
        splits = [float(s) for s in data_split.split(",")]
    except ValueError:
        raise SFTError(f"--data_split {data_split!r}: use {parts} comma-separated numbers such as 2,4,4") from None
    if len(splits) != parts:
        raise SFTError(f"--data_split {data_split!r} has {len(splits)} parts; it needs {parts} (one per phase)")
    if any(s < 0 for s in splits) or sum(splits) == 0:
        raise SFTError(f"--data_split {data_split!r}: parts must be non-negative and not all zero")
    return [s / sum(splits) for s in splits]


def split_indices(seed: int, data_split: str, data_size: int) -> list[np.ndarray]:
    """DeepSpeed-Chat's recipe: shuffle ``arange(n)`` with ``RandomState(seed)``, cut by rounded
    cumulative proportions; the first part absorbs the rounding."""
    splits = parse_data_split(data_split)
    bounds = [0]
    for s in splits:
        bounds.append(bounds[-1] + int(round(s * float(data_size))))
    diff = bounds[-1] - data_size
    bounds = [bounds[0]] + [b - diff for b in bounds[1:]]
    dtype = np.uint32 if data_size < np.iinfo(np.uint32).max - 1 else np.int64
    order = np.arange(data_size, dtype=dtype)
    np.random.RandomState(seed=seed).shuffle(order)
    return [order[bounds[i]:bounds[i + 1]] for i in range(len(splits))]


# --------------------------------------------------------------------------------------------
# Tokenized datasets
# --------------------------------------------------------------------------------------------

class PromptDataset(Dataset):
    """Phase-1 samples: ``input_ids``, ``attention_mask`` and ``labels`` (-100 on padding)."""

    def __init__(self, prompt_dataset, chosen_dataset, reject_dataset, pad_token_id, train_phase):
        self.prompt_dataset, self.chosen_dataset = prompt_dataset, chosen_dataset
        self.reject_dataset, self.pad_token_id, self.train_phase = reject_dataset, pad_token_id, train_phase

    def __len__(self):
        return len(self.chosen_dataset)

    def __getitem__(self, idx):
        sample = self.chosen_dataset[idx]
        ids, mask = sample["input_ids"], sample["attention_mask"]
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.where(mask.bool(), ids, torch.tensor(-100))}


def tokenize_phase1(texts: list[str], tokenizer, max_seq_len: int) -> list[dict]:
    """Tokenize one text at a time, padded to ``max_seq_len`` (the original recipe)."""
    out = []
    for text in texts:
        tok = tokenizer(text, max_length=max_seq_len, padding="max_length", truncation=True,
                        return_tensors="pt")
        out.append({"input_ids": tok["input_ids"].squeeze(0), "attention_mask": tok["attention_mask"].squeeze(0)})
    return out


def create_dataset_split(current_dataset, raw_dataset, train_phase, tokenizer,
                         end_of_conversation_token, max_seq_len) -> PromptDataset:
    """Phase 1 only here: ``prompt + chosen + end_of_conversation_token`` per usable row."""
    if train_phase != 1:
        raise SFTError("sftlib.train runs phase 1 (SFT); phases 2 and 3 belong to later steps")
    texts = [t + end_of_conversation_token for t in map(raw_dataset.get_prompt_and_chosen, current_dataset)
             if t is not None]
    chosen = tokenize_phase1(texts, tokenizer, max_seq_len)
    return PromptDataset([], chosen, [], tokenizer.pad_token_id, train_phase)


def create_prompt_dataset(local_rank, data_path, data_split, output_path, train_phase, seed, tokenizer,
                          max_seq_len, end_of_conversation_token="<|endoftext|>", sft_only_data_path=(),
                          reload=False):
    """Train and eval ``PromptDataset`` for ``train_phase``, several data paths concatenated."""
    if isinstance(data_path, str):
        data_path = [data_path]
    trains, evals = [], []
    for name in list(data_path) + list(sft_only_data_path):
        raw = get_raw_dataset(name, output_path, seed, local_rank)
        split = "10,0,0" if name in sft_only_data_path else data_split
        for rows, bucket in ((raw.get_train_data(), trains), (raw.get_eval_data(), evals)):
            idx = split_indices(seed, split, len(rows))[train_phase - 1]
            bucket.append(create_dataset_split([rows[int(i)] for i in idx], raw, train_phase, tokenizer,
                                               end_of_conversation_token, max_seq_len))
    if len(trains) == 1:
        return trains[0], evals[0]
    train = torch.utils.data.ConcatDataset(trains)
    order = np.random.RandomState(seed).permutation(len(train))
    return torch.utils.data.Subset(train, order.tolist()), torch.utils.data.ConcatDataset(evals)
