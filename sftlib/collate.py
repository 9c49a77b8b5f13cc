"""Opt-in batching for phase 1: dynamic padding and packing (compat pads every sample to max_seq_len).

- ``DynamicPaddingCollator``: pads each batch to its longest sample, rounded up to a multiple of
  8 (tensor-core friendly), instead of to ``max_seq_len``.
- ``PackedDataset`` + ``PackingCollator``: several samples share one row of at most
  ``max_seq_len`` tokens. Attention never crosses samples: the collator sends ``position_ids``
  that restart at 0 for every sample and a 4-D block-diagonal causal ``attention_mask``, which
  transformers passes to eager/sdpa attention unchanged (flash-attention kernels ignore 4-D masks:
  there, use position_ids-based varlen packing instead). The first token of each sample gets
  label ``IGNORE_INDEX`` (-100), so no sample is trained to predict its neighbour. Cost: an L x L mask per row.

Explained in notebooks/01_dataset_abstraction.ipynb.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

from sftlib.constants import IGNORE_INDEX


def round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple) if multiple > 1 else n


class DynamicPaddingCollator:
    """Pad ``input_ids``/``attention_mask``/``labels`` to the batch's longest (a multiple of ``pad_to_multiple_of``)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8, max_len: int | None = None):
        self.pad_token_id, self.multiple, self.max_len = pad_token_id, pad_to_multiple_of, max_len

    def __call__(self, samples: list[dict]) -> dict:
        longest = max(int(s["attention_mask"].sum()) for s in samples)
        length = round_up(longest, self.multiple)
        if self.max_len is not None:
            length = min(length, max(self.max_len, longest))
        fill = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        out = {k: torch.full((len(samples), length), v, dtype=torch.long) for k, v in fill.items()}
        for i, s in enumerate(samples):
            n = int(s["attention_mask"].sum())
            for k in fill:
                out[k][i, :n] = s[k][:n]
        return out


def pack_greedy(lengths: list[int], max_len: int) -> list[list[int]]:
    """Fill rows in order: a sample goes in the current row if it fits, else starts a new one."""
    bins, current, used = [], [], 0
    for i, n in enumerate(lengths):
        if current and used + n > max_len:
            bins.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        bins.append(current)
    return bins


class PackedDataset(Dataset):
    """Rows of several consecutive samples of a phase-1 ``PromptDataset`` (read unpadded)."""

    def __init__(self, dataset, max_seq_len: int):
        self.dataset, self.max_seq_len = dataset, max_seq_len
        lengths = [len(x) for x in dataset.table["input_ids"]]
        self.bins = pack_greedy(lengths, max_seq_len)

    def __len__(self):
        return len(self.bins)

    def __getitem__(self, idx):
        ids, labels, positions = [], [], []
        for j in self.bins[idx]:
            s = self.dataset[j]
            n = int(s["attention_mask"].sum())
            ids.append(s["input_ids"][:n])
            lab = s["labels"][:n].clone()
            lab[0] = IGNORE_INDEX  # never predict a sample's first token from the previous sample
            labels.append(lab)
            positions.append(torch.arange(n))
        return {"input_ids": torch.cat(ids), "labels": torch.cat(labels), "position_ids": torch.cat(positions)}


def block_causal_mask(position_ids: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Additive (batch, 1, L, L) mask: token q may see token k iff k <= q and both lie in the same
    sample (a sample starts wherever ``position_ids`` restarts at 0). 0 = visible, dtype min = hidden."""
    segment = (position_ids == 0).cumsum(-1)  # sample number of each token
    same = segment[:, :, None] == segment[:, None, :]
    causal = torch.ones(position_ids.shape[-1], position_ids.shape[-1], dtype=torch.bool).tril()
    visible = (same & causal)[:, None]
    return torch.zeros(visible.shape, dtype=dtype).masked_fill(~visible, torch.finfo(dtype).min)


class PackingCollator:
    """Batch packed rows: pad to the longest (multiple of 8); padding is a sample of its own.

    Returns ``input_ids``, ``labels``, ``position_ids`` (restarting per sample) and a 4-D additive
    ``attention_mask`` from ``block_causal_mask``, which transformers uses as given (eager and sdpa
    attention), so no token attends across samples, whatever the model family. ``num_tokens``
    (real tokens, for throughput logs) must be popped before the forward pass. ``dtype``: the
    model's compute dtype (sdpa wants the mask in it).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8, dtype=torch.float32):
        self.pad_token_id, self.multiple, self.dtype = pad_token_id, pad_to_multiple_of, dtype

    def __call__(self, rows: list[dict]) -> dict:
        length = round_up(max(len(r["input_ids"]) for r in rows), self.multiple)
        out = {"input_ids": torch.full((len(rows), length), self.pad_token_id, dtype=torch.long),
               "labels": torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long),
               "position_ids": torch.zeros((len(rows), length), dtype=torch.long)}
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            out["input_ids"][i, :n] = r["input_ids"]
            out["labels"][i, :n] = r["labels"]
            out["position_ids"][i, :n] = r["position_ids"]
            out["position_ids"][i, n:] = torch.arange(length - n)  # padding: a block of its own
        out["attention_mask"] = block_causal_mask(out["position_ids"], self.dtype)
        out["num_tokens"] = torch.tensor(sum(len(r["input_ids"]) for r in rows))
        return out


def pop_token_count(batch: dict) -> int:
    """Real (non-padding) tokens of a batch; removes the packing collator's ``num_tokens`` entry,
    which the model must not receive."""
    if "num_tokens" in batch:
        return int(batch.pop("num_tokens"))
    return int(batch["attention_mask"].sum())


def make_collator(kind: str, pad_token_id: int, max_seq_len: int | None = None, dtype=torch.float32):
    """``"compat"`` -> transformers' default collator (samples already padded); ``"dynamic"``;
    ``"packing"``."""
    if kind == "compat":
        from transformers import default_data_collator

        return default_data_collator
    if kind == "dynamic":
        return DynamicPaddingCollator(pad_token_id, 8, max_seq_len)
    if kind == "packing":
        return PackingCollator(pad_token_id, 8, dtype)
    raise ValueError(f"unknown collator {kind!r}")
