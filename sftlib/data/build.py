"""Building the prompt datasets: every set read, split, tokenized and blended, then cached
(``create_prompt_dataset``, DeepSpeed-Chat's entry point, with its signature and result)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

from sftlib.data.cache import (
    DATA_FORMAT_VERSION,
    cache_key,
    cache_problem,
    load_prompt_datasets,
    save_cache,
    tokenizer_fingerprint,
    wait_for_cache,
)
from sftlib.data.check import (
    CheckedData,
    check_data_paths,
    check_data_weights,
    check_split_rows,
    print_notes,
    used_sets,
)
from sftlib.data.messages import chat_template_of, tool_turn_problem
from sftlib.data.prompt_dataset import check_batching, check_labels_2023
from sftlib.data.sources import row_location, select_rows
from sftlib.data.splits import get_raw_dataset_split_index, get_shuffle_idx, part_sizes
from sftlib.data.tokenize import tokenize_split
from sftlib.dist import global_rank
from sftlib.errors import SFTError


@dataclasses.dataclass(frozen=True)
class BuildRequest:
    """What one build of the prompt datasets is asked for (the tokenizer travels beside it)."""

    data_path: tuple[str, ...]            # --data_path entries, blended
    data_split: str                       # --data_split, e.g. "2,4,4"
    output_path: str                      # --data_output_path: split index files and the cache
    train_phase: int                      # 1, 2 or 3
    seed: int
    max_seq_len: int
    end_of_conversation_token: str
    sft_only_data_path: tuple[str, ...] = ()  # phase 1 only, not split
    data_weights: tuple[float, ...] | None = None  # --data_weights, one per data_path entry
    num_proc: int | None = None           # tokenizing processes (None: by size)
    local_rank: int = 0                   # the process with local_rank <= 0 writes the index files


def _blend(tables, seed: int, weights=None, always_shuffle=False):
    """Concatenate then shuffle (compat: each set contributes all its rows). With ``weights``,
    set i contributes ``round(w_i / sum(w) * total)`` rows (repeating a small set if needed).
    As in the original, only a single set given alone keeps its order: several sets of which one is
    left (the others empty), or the sft-only blend (``always_shuffle``), are still shuffled."""
    import datasets

    alone = len(tables) == 1 and not always_shuffle
    if weights is not None:  # an empty set drops out with its weight
        weights = [w for t, w in zip(tables, weights) if len(t)]
    tables = [t for t in tables if len(t)]
    if not tables:
        return None
    if weights is not None and sum(weights) > 0:
        total, wsum = sum(len(t) for t in tables), float(sum(weights))
        picked = []
        for i, (t, w) in enumerate(zip(tables, weights)):
            want = int(round(w / wsum * total))
            order = np.random.RandomState(seed + i).permutation(len(t))
            picked.append(select_rows(t, np.resize(order, want).tolist()))
        tables = picked
    if alone and weights is None:
        return tables[0]
    merged = datasets.concatenate_datasets(tables)
    return select_rows(merged, get_shuffle_idx(seed, len(merged)).tolist())


def _report_truncation(table, max_seq_len: int, where: str, train_phase: int) -> dict:
    if len(table) == 0 or "full_length" not in table.column_names:
        return {"truncated": 0}
    lengths = table.data.column("full_length").to_numpy()
    stats = {"truncated": int((lengths > max_seq_len).sum()), "rows": len(table)}
    if train_phase == 1 and stats["truncated"]:
        prompts_full = int((table.data.column("prompt_tokens").to_numpy() >= max_seq_len).sum())
        warnings.warn(f"{where}: {stats['truncated']} of {len(table)} samples are longer than max_seq_len="
                      f"{max_seq_len} and were truncated (their end-of-conversation token is cut off); "
                      f"{prompts_full} prompts alone fill max_seq_len", stacklevel=3)
        stats["prompt_fills"] = prompts_full
    return stats


def _check_tokenized(table, sets, train_phase: int, which: str) -> None:
    """A split that rows skipped while tokenizing left empty is an error (nothing cached)."""
    if table is not None and len(table):
        return
    used = used_sets(sets, train_phase)
    rows = sum(part_sizes(s.split, s.raw().split_rows()[which == "eval"])[train_phase - 1] for s in used)
    chats = any(s.resolved.spec.kind == "messages" for s in used)
    reasons = ["a chat without an assistant turn" if chats else "a prompt or answer missing or null"]
    reasons += ["a set without rejected answers"] * (train_phase == 2) + ["a prompt longer than --max_seq_len"] * (
        train_phase == 3)
    raise SFTError(f"--data_path {' '.join(s.entry for s in used)}: all {rows} phase-{train_phase} {which} rows were "
                   f"skipped while tokenizing ({', '.join(reasons)}); fix the rows or add usable ones")


def _check_tool_turns(sets, tokenizer) -> None:
    """Chats with a ``tool`` turn need a template that renders it: else one line naming the file and line."""
    for s in sets:
        found = tool_turn_problem(s.splits, tokenizer) if s.resolved.spec.kind == "messages" else None
        if found:
            split, row, problem = found
            source = s.resolved.source
            where = row_location(source, split, row) if source else f"{s.resolved.spec.name} ({split}): row {row + 1}"
            raise SFTError(f"{where}: {problem}")


def _tokenized(request: BuildRequest, tokenizer, sets) -> tuple[list, list, dict]:
    """Each set's phase part, tokenized: (train tables, eval tables), each as (sft-only?, table), and stats."""
    r = request
    trains, evals, stats = [], [], {}
    for s in used_sets(sets, r.train_phase):
        raw = s.raw(r.output_path, r.seed, r.local_rank)
        if raw.spec.rejected is None and r.train_phase == 2:
            print(f"warning: {raw.dataset_name} has no rejected answers; phase 2 gets no rows from it", flush=True)
        for name, rows, bucket in (("train", raw.get_train_data(), trains), ("eval", raw.get_eval_data(), evals)):
            idx = get_raw_dataset_split_index(r.local_rank, r.output_path, raw.dataset_name_clean, r.seed, name,
                                              s.split, r.train_phase - 1, len(rows))
            table = tokenize_split(select_rows(rows, idx), raw, r.train_phase, tokenizer, r.end_of_conversation_token,
                                   r.max_seq_len, r.num_proc)
            stats[f"{s.entry}:{name}"] = _report_truncation(table, r.max_seq_len, f"{s.entry} ({name})", r.train_phase)
            bucket.append((s.sft_only, table))
    return trains, evals, stats


def build_prompt_datasets(request: BuildRequest, tokenizer, checked_data: CheckedData | None = None):
    """Tokenize and blend every set (no cache). Returns Arrow (train, eval) and a stats dict.

    ``checked_data`` (``check_data_paths``' result for this request) supplies the rows already read;
    without it they are read here. Every split is decided (``check_split_rows``) before anything is
    tokenized; a split left empty is an error, never an empty table."""
    r = request
    if checked_data is None:
        checked_data = check_data_paths(r.data_path, r.sft_only_data_path, r.data_split, r.train_phase, read=False)
    sets = checked_data.read().sets
    check_split_rows(sets, r.train_phase)
    _check_tool_turns(sets, tokenizer)
    trains, evals, stats = _tokenized(r, tokenizer, sets)
    train = _blend([t for sft, t in trains if not sft], r.seed, r.data_weights)
    evals_main = _blend([t for sft, t in evals if not sft], r.seed)
    sft_train = [t for sft, t in trains if sft]
    sft_eval = [t for sft, t in evals if sft]
    if sft_train and any(len(t) for t in sft_train):
        train = _blend(([train] if train is not None else []) + sft_train, r.seed, always_shuffle=True)
    if sft_eval and any(len(t) for t in sft_eval):
        evals_main = _blend(([evals_main] if evals_main is not None else []) + sft_eval, r.seed, always_shuffle=True)
    _check_tokenized(train, sets, r.train_phase, "train")
    _check_tokenized(evals_main, sets, r.train_phase, "eval")
    return train, evals_main, stats


def cache_key_parts(request: BuildRequest, tokenizer, checked_data: CheckedData) -> dict:
    """What the cache key covers: every data file's bytes (or the hub fingerprint), the tokenizer,
    the end-of-conversation token, max_seq_len, split, phase, seed, blend weights, format version.
    ``checked_data`` must be fingerprinted (``CheckedData.fingerprinted``)."""
    r, sets = request, checked_data.sets
    sources = [s.fingerprint if s.is_local else f"hub:{s.resolved.spec.load_id}:{s.resolved.spec.hub_config}"
               for s in sets]
    parts = {"format_version": DATA_FORMAT_VERSION, "data_path": list(r.data_path), "sources": sources,
             "sft_only": list(r.sft_only_data_path), "split": r.data_split, "phase": r.train_phase, "seed": r.seed,
             "max_seq_len": r.max_seq_len, "eot": r.end_of_conversation_token,
             "tokenizer": tokenizer_fingerprint(tokenizer),
             "blend_weights": list(r.data_weights) if r.data_weights is not None else None}
    if any(s.resolved.spec.kind == "messages" for s in sets):  # chats: the template that renders them changes the ids
        parts["chat_template"] = chat_template_of(tokenizer)
    if not all(s.is_local for s in sets):  # hub sets: include their fingerprints
        parts["hub"] = [s.fingerprint for s in sets if not s.is_local]
    return parts


def create_prompt_dataset(local_rank, data_path, data_split, output_path, train_phase, seed, tokenizer,
                          max_seq_len, end_of_conversation_token="<|endoftext|>", sft_only_data_path=(),
                          reload=False, data_weights=None, mask_prompt=False, batching="compat",
                          num_proc=None, labels_2023=False, wait_timeout=7200.0, run_id=None, checked_data=None,
                          **old_names):
    """Train and eval ``PromptDataset`` for ``train_phase``: DeepSpeed-Chat's signature and result (its
    first nine parameters, in its order), then sftlib's, named as their flags.

    ``checked_data`` is ``check_data_paths``' result for these entries (``validate_args`` makes it): the
    build then reads nothing again; without it the entries are resolved here, their bytes hashed for the
    cache key, and local rank 0 reads the rows only when it builds.
    The tokenized sets are cached under ``output_path/prompt_dataset_<key>/`` (Arrow); the key is
    ``cache_key_parts``. Local rank 0 of each node builds (under a file lock, so a folder shared by
    several nodes is built once and the others find it complete), as DeepSpeed-Chat; the node's other
    ranks poll for the finished cache for at most ``wait_timeout`` seconds. ``run_id`` (the same on
    every rank of one job) ties a builder's failure marker to this job, so a marker left by an
    earlier run is never taken for this one's. A damaged cache is rebuilt with a warning.
    ``mask_prompt``, ``batching`` (``compat``, ``dynamic`` or ``packing``: ``arguments.batching_mode``)
    and ``labels_2023`` only change how samples are read, not the cache. ``old_names``: the keywords
    before the renaming (``blend_weights``, ``pad_to_max_len``, ``train_on_padding``), still accepted.
    """
    if old_names:
        data_weights, batching, labels_2023 = _from_old_names(old_names, data_weights, batching, labels_2023)
    if train_phase not in (1, 2, 3):
        raise SFTError(f"train_phase must be 1, 2 or 3 (got {train_phase})")
    check_batching(batching)
    check_labels_2023(labels_2023, mask_prompt, batching)
    data_path = [data_path] if isinstance(data_path, str) else list(data_path)
    data_weights = check_data_weights(data_weights, len(data_path))
    if checked_data is None:  # resolved here; the rows are read below, only for a build
        checked_data = check_data_paths(data_path, sft_only_data_path, data_split, train_phase, read=False)
        print_notes(checked_data)
    elif not checked_data.is_for(data_path, sft_only_data_path, data_split):
        raise SFTError("create_prompt_dataset: checked_data was made for other --data_path, --sft_only_data_path or "
                       "--data_split values; check these (check_data_paths)")
    checked_data = checked_data.fingerprinted()
    request = BuildRequest(tuple(data_path), data_split, output_path, train_phase, seed, max_seq_len,
                           end_of_conversation_token, checked_data.sft_only_data_path, data_weights, num_proc,
                           local_rank)
    key_parts = cache_key_parts(request, tokenizer, checked_data)
    folder = Path(output_path) / f"prompt_dataset_{cache_key(key_parts)}"
    if local_rank <= 0:
        if reload or cache_problem(folder) is not None:  # a build: its rows read and split before anything is written
            checked_data = checked_data.read()
            check_split_rows(checked_data.sets, train_phase)
        _build_if_needed(folder, reload, key_parts, request, tokenizer, checked_data, run_id)
    else:
        wait_for_cache(folder, timeout_s=wait_timeout, run_id=run_id)
    return load_prompt_datasets(folder, tokenizer.pad_token_id, train_phase, max_seq_len, mask_prompt, batching,
                                labels_2023)


OLD_NAMES = {"blend_weights": "data_weights", "pad_to_max_len": "batching", "train_on_padding": "labels_2023"}


def _from_old_names(old: dict, data_weights, batching, labels_2023) -> tuple:
    """(data_weights, batching, labels_2023) with the old keywords' values (``pad_to_max_len=False`` is
    ``batching="dynamic"``); any other keyword is the TypeError Python gives."""
    unknown = sorted(set(old) - set(OLD_NAMES))
    if unknown:
        raise TypeError(f"create_prompt_dataset() got an unexpected keyword argument {unknown[0]!r}")
    if "pad_to_max_len" in old:
        batching = "compat" if old["pad_to_max_len"] else "dynamic"
    return old.get("blend_weights", data_weights), batching, old.get("train_on_padding", labels_2023)


def _build_if_needed(folder: Path, reload: bool, key_parts: dict, request: BuildRequest, tokenizer,
                     checked_data: CheckedData, run_id=None) -> None:
    """Local rank 0: build the cache unless it is complete (under a file lock), with the rows checked."""
    from filelock import FileLock

    os.makedirs(folder.parent, exist_ok=True)
    with FileLock(f"{folder}.lock"):
        problem = cache_problem(folder)
        if problem is None and not reload:
            return
        if problem != "missing" and not reload:
            warnings.warn(f"dataset cache {folder} is damaged ({problem}); rebuilding it", stacklevel=3)
        failed = Path(f"{folder}.failed")
        failed.unlink(missing_ok=True)
        try:
            _build(folder, key_parts, request, tokenizer, checked_data)
        except BaseException as err:
            failed.write_text(json.dumps({"run_id": run_id, "error": f"local rank 0 (global rank {global_rank()}) "
                                          f"could not build the dataset cache: {err}"}))
            raise


def _build(folder: Path, key_parts: dict, request: BuildRequest, tokenizer, checked_data: CheckedData) -> None:
    import datasets

    t0 = time.time()
    quiet = datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        train, evals, stats = build_prompt_datasets(request, tokenizer, checked_data)
        save_cache(folder, train, evals, {"key": key_parts, "train_rows": len(train), "eval_rows": len(evals),
                                          "stats": stats, "build_seconds": round(time.time() - t0, 3)})
    finally:
        if not quiet:
            datasets.utils.enable_progress_bars()
    print(f"built dataset cache {folder.name[:28]}... ({len(train)} train / {len(evals)} eval rows, "
          f"{time.time() - t0:.1f} s)", flush=True)
