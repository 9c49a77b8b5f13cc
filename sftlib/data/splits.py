"""Splits: phases 1/2/3 share one seeded permutation of a set, cut by ``--data_split``; phase p uses
part p-1, and the index files carry DeepSpeed-Chat's names."""

from __future__ import annotations

import os

import numpy as np

from sftlib.errors import SFTError


def parse_data_split(data_split: str, parts: int = 3) -> list[float]:
    """``"2,4,4"`` -> ``[0.2, 0.4, 0.4]``; errors name the argument."""
    try:
        splits = [float(s) for s in str(data_split).split(",")]
    except ValueError:
        raise SFTError(f"--data_split {data_split!r}: use {parts} comma-separated numbers such as 2,4,4") from None
    if len(splits) != parts:
        raise SFTError(f"--data_split {data_split!r} has {len(splits)} parts; it needs {parts} (one per phase)")
    if any(s < 0 for s in splits):
        raise SFTError(f"--data_split {data_split!r}: parts must not be negative")
    if sum(splits) == 0:
        raise SFTError(f"--data_split {data_split!r}: the parts are all zero; give at least one a share")
    return [s / sum(splits) for s in splits]


def get_shuffle_idx(seed: int, size: int) -> np.ndarray:
    """``arange(size)`` shuffled by ``RandomState(seed)`` (uint32 unless the size needs int64)."""
    dtype = np.uint32 if size < np.iinfo(np.uint32).max - 1 else np.int64
    order = np.arange(size, dtype=dtype)
    np.random.RandomState(seed=seed).shuffle(order)
    return order


def _bounds(data_split: str, data_size: int) -> list[int]:
    """DeepSpeed-Chat's cut points: rounded cumulative proportions, the first part absorbing the rounding."""
    splits = parse_data_split(data_split, parts=len(str(data_split).split(",")))
    bounds = [0]
    for s in splits:
        bounds.append(bounds[-1] + int(round(s * float(data_size))))
    diff = bounds[-1] - data_size
    return [bounds[0]] + [b - diff for b in bounds[1:]]


def part_sizes(data_split: str, data_size: int) -> list[int]:
    """How many rows each part of ``split_indices`` gets (nothing shuffled, nothing written):
    ``part_sizes("2,4,4", 4) == [0, 2, 2]``, so phase 1 of a 4-row set gets no rows."""
    bounds = _bounds(data_split, data_size)
    return [max(0, bounds[i + 1] - bounds[i]) for i in range(len(bounds) - 1)]


def split_indices(seed: int, data_split: str, data_size: int) -> list[np.ndarray]:
    """DeepSpeed-Chat's recipe: shuffle, cut by rounded cumulative proportions; the first part
    absorbs the rounding."""
    bounds = _bounds(data_split, data_size)
    order = get_shuffle_idx(seed, data_size)
    return [order[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]


def index_file_name(output_path, dataset_name_clean, seed, split_name, data_split, split_index) -> str:
    """The original's index file: ``{clean}_seed{seed}_{train|eval|train_eval}_{split}_{i}.npy``."""
    return os.path.join(output_path, f"{dataset_name_clean}_seed{seed}_{split_name}_{data_split}_{split_index}.npy")


def get_raw_dataset_split_index(local_rank, output_path, dataset_name_clean, seed, split_name, data_split,
                                split_index, data_size, rebuild=False) -> list[int]:
    """Indices of part ``split_index``; the process with ``local_rank <= 0`` (re)writes all parts as ``.npy``.

    Unlike the original, the indices are always recomputed (cheap), so an edited dataset can never
    be paired with stale index files; each file is written to a temporary name, then renamed.
    """
    parts = split_indices(seed, data_split, data_size)
    if local_rank <= 0 and output_path:
        os.makedirs(output_path, exist_ok=True)
        for i, part in enumerate(parts):
            final = index_file_name(output_path, dataset_name_clean, seed, split_name, data_split, i)
            tmp = f"{final}.{os.getpid()}.tmp.npy"
            np.save(tmp, part)
            os.replace(tmp, final)
    return parts[split_index].tolist()
