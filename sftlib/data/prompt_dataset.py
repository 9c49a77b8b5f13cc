"""Tokenized datasets: ``PromptDataset`` reads unpadded Arrow rows and returns the original's tensors."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from sftlib.constants import IGNORE_INDEX
from sftlib.errors import SFTError


def _pad(ids: list[int], length: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.full((length,), pad_id, dtype=torch.long)
    mask = torch.zeros(length, dtype=torch.long)
    out[:len(ids)] = torch.tensor(ids, dtype=torch.long)
    mask[:len(ids)] = 1
    return out, mask


BATCHINGS = ("compat", "dynamic", "packing")  # arguments.batching_mode's answers


def check_batching(batching: str) -> None:
    """``batching`` is one of ``BATCHINGS``: compat pads every sample to max_seq_len (DeepSpeed-Chat's);
    dynamic and packing leave samples unpadded for a collator from ``sftlib.collate``."""
    if batching not in BATCHINGS:
        raise SFTError(f"batching must be one of {', '.join(BATCHINGS)} (got {batching!r})")


def check_labels_2023(labels_2023: bool, mask_prompt: bool, batching: str) -> None:
    """The one rule of ``--labels_2023``: the 2023 labels (input ids, padding included) exist only for
    rows padded to --max_seq_len with the prompt trained on."""
    if labels_2023 and (mask_prompt or batching != "compat"):
        raise SFTError("--labels_2023 reproduces the 2023 labels (input ids, padding included) of rows padded to "
                       "--max_seq_len; drop --mask_prompt, --dynamic_padding and --packing")


class PromptDataset(Dataset):
    """Tokenized samples of one phase, stored unpadded (Arrow), returned like the original's.

    Phase 1 yields ``input_ids``, ``attention_mask`` and ``labels`` (-100 on padding, and on the
    prompt when ``mask_prompt``; equal to ``input_ids``, padding included, with ``labels_2023``:
    the 2023 code's labels); padded to ``max_seq_len`` when ``batching`` is ``compat``, else unpadded
    (a collator from ``sftlib.collate`` pads each batch). Phase 2 yields (chosen ids, chosen mask,
    rejected ids, rejected mask), each of shape (1, max_seq_len); phase 3 yields (reversed prompt
    ids, reversed mask, pad id), as the original stores them for left padding.
    """

    def __init__(self, table, pad_token_id: int, train_phase: int, max_seq_len: int,
                 mask_prompt: bool = False, batching: str = "compat", labels_2023: bool = False):
        check_batching(batching)
        check_labels_2023(labels_2023, mask_prompt, batching)
        self.table, self.pad_token_id, self.train_phase = table, pad_token_id, train_phase
        self.max_seq_len, self.mask_prompt, self.batching = max_seq_len, mask_prompt, batching
        self.labels_2023 = labels_2023

    @property
    def pad_to_max_len(self) -> bool:
        """Whether samples come padded to max_seq_len (``batching == "compat"``)."""
        return self.batching == "compat"

    def __len__(self):
        return len(self.table)

    def __getitem__(self, idx):
        row = self.table[int(idx)]
        if self.train_phase == 1:
            return self._phase1(row)
        if self.train_phase == 2:
            c, cm = _pad(row["chosen_input_ids"], self.max_seq_len, self.pad_token_id)
            r, rm = _pad(row["rejected_input_ids"], self.max_seq_len, self.pad_token_id)
            return c[None], cm[None], r[None], rm[None]
        ids = torch.tensor(row["input_ids"], dtype=torch.long)
        return ids.flip(0), torch.ones_like(ids), self.pad_token_id

    def _phase1(self, row):
        n = len(row["input_ids"])
        length = self.max_seq_len if self.pad_to_max_len else n
        ids, mask = _pad(row["input_ids"], length, self.pad_token_id)
        labels = ids.clone() if self.labels_2023 else torch.where(mask.bool(), ids, torch.tensor(IGNORE_INDEX))
        if self.mask_prompt:
            labels[:row["prompt_tokens"]] = IGNORE_INDEX
        if row.get("label_mask") is not None:  # messages data: loss on the assistant turns only
            labels[:n][torch.tensor(row["label_mask"], dtype=torch.bool).logical_not()] = IGNORE_INDEX
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
