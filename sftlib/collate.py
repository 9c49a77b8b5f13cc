"""Opt-in batching for phase 1: dynamic padding and packing (compat pads every sample to max_seq_len).

- ``DynamicPaddingCollator``: pads each batch to its longest sample, rounded up to a multiple of
  8 (tensor-core friendly), instead of to ``max_seq_len``.
- ``PackedDataset`` + ``PackingCollator``: several samples share one row of at most
  ``max_seq_len`` tokens (bins from the stored Arrow lengths, never Python lists of every row's
  ids). Attention never crosses samples: the collator sends ``position_ids`` that restart at 0 for
  every sample, and then one of three layouts (``--packing MODE``):

  - ``mask``: a 4-D block-diagonal causal ``attention_mask`` built here, which transformers passes
    to eager/sdpa attention unchanged. Works for every family; costs an L x L mask per row.
  - ``padding_free``: ``position_ids`` only, no mask. transformers 5 rebuilds the block-diagonal
    mask on the device from the restarts (``masking_utils.find_packed_sequence_indices``) -- but
    only in families whose ``create_causal_mask`` call receives ``position_ids`` (Llama, Mistral,
    Qwen, ...; not OPT in 5.24, whose packed rows would attend across samples).
  - ``flatten``: all rows of the batch concatenated into one row, no padding, no mask: what
    FlashAttention's varlen path needs (``_is_packed_sequence`` wants batch size 1), as TRL's
    ``DataCollatorWithFlattening`` does.

  ``auto`` picks ``flatten`` under flash attention, ``padding_free`` where
  ``padding_free_supported`` proves the family honours restarts, else ``mask``. The first token
  of each sample gets label ``IGNORE_INDEX`` (-100), so no sample is trained to predict its neighbour.

Explained in notebooks/01_dataset_abstraction.ipynb.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from sftlib.constants import IGNORE_INDEX
from sftlib.errors import SFTError


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


def stored_lengths(table) -> np.ndarray:
    """Token count of every row, read from the Arrow list offsets of ``input_ids`` (no Python lists)."""
    import pyarrow.compute as pc

    column = table.with_format("arrow")["input_ids"] if hasattr(table, "with_format") else table["input_ids"]
    if not hasattr(column, "type"):  # a plain list of rows
        return np.array([len(x) for x in column], dtype=np.int64)
    return pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)


class PackedDataset(Dataset):
    """Rows of several consecutive samples of a phase-1 ``PromptDataset`` (read unpadded)."""

    def __init__(self, dataset, max_seq_len: int):
        self.dataset, self.max_seq_len = dataset, max_seq_len
        self.bins = pack_greedy(stored_lengths(dataset.table).tolist(), max_seq_len)

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


PACKING_MODES = ("auto", "mask", "padding_free", "flatten")


class PackingCollator:
    """Batch packed rows: pad to the longest (multiple of 8); padding is a sample of its own.

    Returns ``input_ids``, ``labels``, ``position_ids`` (restarting per sample) and, in ``mask``
    mode, a 4-D additive ``attention_mask`` from ``block_causal_mask`` (eager and sdpa use it as
    given, whatever the family). ``padding_free`` sends no mask; ``flatten`` also concatenates the
    rows into one unpadded row. ``num_tokens`` (real tokens, for throughput logs) must be popped
    before the forward pass. ``dtype``: the model's compute dtype (sdpa wants the mask in it).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8, dtype=torch.float32, mode: str = "mask"):
        if mode not in PACKING_MODES[1:]:
            raise ValueError(f"unknown packing mode {mode!r}; resolve 'auto' with packing_mode() first")
        self.pad_token_id, self.multiple, self.dtype, self.mode = pad_token_id, pad_to_multiple_of, dtype, mode

    def __call__(self, rows: list[dict]) -> dict:
        n_tokens = torch.tensor(sum(len(r["input_ids"]) for r in rows))
        if self.mode == "flatten":
            out = {k: torch.cat([r[k] for r in rows])[None] for k in ("input_ids", "labels", "position_ids")}
            return {**out, "num_tokens": n_tokens}
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
        if self.mode == "mask":
            out["attention_mask"] = block_causal_mask(out["position_ids"], self.dtype)
        out["num_tokens"] = n_tokens
        return out


def padding_free_supported(config) -> bool:
    """Does this family's attention keep packed samples apart from ``position_ids`` alone?

    Proven, not guessed: a 1-layer model of the same class (tiny sizes, same attention
    implementation) runs two samples packed into one row without a mask, and each sample's logits
    must equal those of the sample alone. Any failure (an exotic config) answers False: the mask
    fallback is always right.
    """
    from transformers import AutoModelForCausalLM

    try:
        tiny = config.__class__.from_dict({**config.to_dict(), "num_hidden_layers": 1, "hidden_size": 32,
                                           "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16,
                                           "intermediate_size": 64, "ffn_dim": 64, "word_embed_proj_dim": 32,
                                           "vocab_size": 64, "layer_types": None, "dropout": 0.0,
                                           "attention_dropout": 0.0})
        tiny._attn_implementation = getattr(config, "_attn_implementation", None) or "sdpa"
        with torch.random.fork_rng(devices=[]):  # the caller's generator state is left as it was
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(tiny, attn_implementation=tiny._attn_implementation).eval()
        a, b = torch.arange(3, 9), torch.arange(10, 15)
        positions = torch.cat([torch.arange(6), torch.arange(5)])[None]
        with torch.no_grad():  # use_cache=False: transformers reads packed rows only without a cache
            packed = model(input_ids=torch.cat([a, b])[None], position_ids=positions, use_cache=False).logits
            alone = model(input_ids=b[None], use_cache=False).logits
        return bool(torch.allclose(packed[0, 6:], alone[0], atol=1e-5))
    except Exception:  # noqa: BLE001 - any failure means "use the mask"
        return False


def packing_mode(requested: str, config) -> str:
    """Resolve ``--packing auto`` for a model config: flatten (flash attention), padding_free or mask.

    An explicit ``padding_free`` or ``flatten`` that this model would silently get wrong (samples
    attending to each other) is refused with an ``SFTError``."""
    flash = str(getattr(config, "_attn_implementation", None) or "").startswith("flash_attention")
    if requested == "mask" or (requested == "flatten" and flash):
        return requested
    supported = padding_free_supported(config)
    if requested == "auto":
        return "flatten" if flash else "padding_free" if supported else "mask"
    if not supported and not flash:
        raise SFTError(f"--packing {requested}: {getattr(config, 'model_type', 'this model')} with "
                       f"{getattr(config, '_attn_implementation', None) or 'sdpa'} attention ignores restarting "
                       "position_ids (packed samples would attend to each other); use --packing mask or auto")
    return requested


def pop_token_count(batch: dict) -> int:
    """Real (non-padding) tokens of a batch; removes the packing collator's ``num_tokens`` entry,
    which the model must not receive."""
    if "num_tokens" in batch:
        return int(batch.pop("num_tokens"))
    return int(batch["attention_mask"].sum())


def make_collator(kind: str, pad_token_id: int, max_seq_len: int | None = None, dtype=torch.float32,
                  packing: str = "mask"):
    """``"compat"`` -> transformers' default collator (samples already padded); ``"dynamic"``;
    ``"packing"`` (``packing``: a resolved ``PACKING_MODES`` entry)."""
    if kind == "compat":
        from transformers import default_data_collator

        return default_data_collator
    if kind == "dynamic":
        return DynamicPaddingCollator(pad_token_id, 8, max_seq_len)
    if kind == "packing":
        return PackingCollator(pad_token_id, 8, dtype, packing)
    raise ValueError(f"unknown collator {kind!r}")
