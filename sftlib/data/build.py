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
from sftlib.data.messages import chat_template_of, tool_turn_problem
from sftlib.data.raw import get_raw_dataset
from sftlib.data.registry import resolve_data_path
from sftlib.data.sources import fingerprint_source, load_hub, row_location, select_rows
from sftlib.data.splits import get_raw_dataset_split_index, get_shuffle_idx, parse_data_split, part_sizes
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
    sft_only: tuple[str, ...] = ()        # --sft_only_data_path entries (no split; phase 1 only)
    blend_weights: tuple[float, ...] | None = None  # --data_weights, one per data_path entry
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


def _entries(request: BuildRequest) -> list[tuple[str, str, bool]]:
    """(entry, its split, sft-only?) for every set the build reads; sft-only sets skip the split."""
    return [(p, request.data_split, False) for p in request.data_path] + [(p, "10,0,0", True) for p in request.sft_only]


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _least(data_split: str, part: int, start: int, cut: bool) -> int | None:
    """The fewest rows (from ``start``) for which ``part`` of ``data_split`` gets a train row and an eval
    row (``cut``: eval is the 9:1 cut of the same rows); None if no size up to 100,000 does."""
    for n in range(max(start, 1), 100_001):
        train, evals = part_sizes("9,1", n) if cut else (n, n)
        if part_sizes(data_split, train)[part] and part_sizes(data_split, evals)[part]:
            return n
    return None


def check_split_rows(sets, train_phase: int) -> None:
    """Every split decided before any tokenizing. ``sets``: (entry, its split, sft-only?, PromptRawDataset).
    Phase ``train_phase`` must get at least one train row and one eval row from the blend (an empty split
    is never cached); otherwise one line names the data path, the split and the row counts.

    An empty eval split is an error, not a run without evaluation: DeepSpeed-Chat evaluates before
    training and after every epoch (``step1_supervised_finetuning/main.py``; its ``evaluation`` fails on
    an unset ``step`` when there is no eval batch), and a first run's perplexity is how one sees that
    the model learned."""
    part = train_phase - 1
    sets = [(entry, split, raw.split_rows()) for entry, split, sft, raw in sets if not (sft and train_phase != 1)]
    if not sets:
        return
    phase = [(part_sizes(split, n_train), part_sizes(split, n_eval)) for _, split, (n_train, n_eval, _) in sets]
    paths = " ".join(entry for entry, _, _ in sets)

    def why(which: int) -> str:  # which: 0 train, 1 eval
        said = []
        for (entry, split, (n_train, n_eval, cut)), shares in zip(sets, phase):
            n = (n_train, n_eval)[which]
            text = (f"{_rows(n_train + n_eval)} cut 9:1 into {n_train} train / {n_eval} eval" if cut
                    else f"{n} {('train', 'eval')[which]} row{'' if n == 1 else 's'}")
            if n:  # the split, not the cut, left this phase none
                text += f", --data_split {split} gives phases 1/2/3 {'/'.join(map(str, shares[which]))}"
            said.append(text if len(sets) == 1 else f"{entry}: {text}")
        return "; ".join(said)

    if sum(train[part] for train, _ in phase) == 0:
        raise SFTError(f"--data_path {paths}: phase {train_phase} gets no train rows ({why(0)}); give phase "
                       f"{train_phase} a larger share of --data_split (10,0,0 for SFT alone) or more rows")
    if sum(evals[part] for _, evals in phase) == 0:
        fixes = []
        for (_, split, (n_train, n_eval, cut)), _ in zip(sets, phase):
            least = _least(split, part, n_train + n_eval if cut else n_eval, cut)
            if least is not None:
                fixes.append(f"{least} rows or more" if cut else f"an eval split of {least} rows or more")
            if n_eval:  # the split, not the row count, left this phase no eval row
                fixes.append(f"a larger phase-{train_phase} share of --data_split (10,0,0 for SFT alone)")
        if any(cut for _, _, (_, _, cut) in sets):  # a single file: an eval file of its own helps too
            fixes.append("a folder with train.json and eval.json")
        fixes = list(dict.fromkeys(fixes))
        raise SFTError(f"--data_path {paths}: phase {train_phase} gets no eval rows ({why(1)}); training evaluates "
                       f"before the first step and after each epoch, as DeepSpeed-Chat does: give "
                       f"{', or '.join(fixes)}")


def _check_tokenized(table, sets, train_phase: int, which: str) -> None:
    """A split that rows skipped while tokenizing left empty is an error (nothing cached)."""
    if table is not None and len(table):
        return
    used = [(entry, split, raw) for entry, split, sft, raw in sets if not (sft and train_phase != 1)]
    rows = sum(part_sizes(split, raw.split_rows()[which == "eval"])[train_phase - 1] for _, split, raw in used)
    chats = any(raw.spec.kind == "messages" for _, _, raw in used)
    reasons = ["a chat without an assistant turn" if chats else "a prompt or answer missing or null"]
    reasons += ["a set without rejected answers"] * (train_phase == 2) + ["a prompt longer than --max_seq_len"] * (
        train_phase == 3)
    raise SFTError(f"--data_path {' '.join(e for e, _, _ in used)}: all {rows} phase-{train_phase} {which} rows were "
                   f"skipped while tokenizing ({', '.join(reasons)}); fix the rows or add usable ones")


def _check_tool_turns(sets, tokenizer) -> None:
    """Chats with a ``tool`` turn need a template that renders it: else one line naming the file and line."""
    for _, _, _, raw in sets:
        found = tool_turn_problem(raw.raw_datasets, tokenizer) if raw.spec.kind == "messages" else None
        if found:
            split, row, problem = found
            where = row_location(raw.source, split, row) if raw.source else \
                f"{raw.dataset_name} ({split}): row {row + 1}"
            raise SFTError(f"{where}: {problem}")


def build_prompt_datasets(request: BuildRequest, tokenizer):
    """Tokenize and blend every set (no cache). Returns Arrow (train, eval) and a stats dict.

    Every set is read and its splits decided (``check_split_rows``) before anything is tokenized; a
    split left empty is an error, never an empty table."""
    r = request
    sets = [(entry, split, sft, get_raw_dataset(entry, r.output_path, r.seed, r.local_rank))
            for entry, split, sft in _entries(r)]
    check_split_rows(sets, r.train_phase)
    _check_tool_turns(sets, tokenizer)
    trains, evals, stats = [], [], {}
    for entry, split, sft, raw in sets:
        if sft and r.train_phase != 1:
            continue  # sft-only sets feed phase 1 alone
        if raw.spec.rejected is None and r.train_phase == 2:
            print(f"warning: {raw.dataset_name} has no rejected answers; phase 2 gets no rows from it", flush=True)
        for name, rows, bucket in (("train", raw.get_train_data(), trains), ("eval", raw.get_eval_data(), evals)):
            idx = get_raw_dataset_split_index(r.local_rank, r.output_path, raw.dataset_name_clean, r.seed, name,
                                              split, r.train_phase - 1, len(rows))
            table = tokenize_split(select_rows(rows, idx), raw, r.train_phase, tokenizer, r.end_of_conversation_token,
                                   r.max_seq_len, r.num_proc)
            stats[f"{entry}:{name}"] = _report_truncation(table, r.max_seq_len, f"{entry} ({name})", r.train_phase)
            bucket.append((sft, table))
    main_w = r.blend_weights[:len(r.data_path)] if r.blend_weights else None
    train = _blend([t for sft, t in trains if not sft], r.seed, main_w)
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


def cache_key_parts(request: BuildRequest, tokenizer) -> dict:
    """What the cache key covers: every data file's bytes (or the hub fingerprint), the tokenizer,
    the end-of-conversation token, max_seq_len, split, phase, seed, blend weights, format version.
    Unknown dataset names fail here, before anything is built."""
    r = request
    resolved = [resolve_data_path(p) for p in r.data_path + r.sft_only]
    sources = [fingerprint_source(spec, src) if src else f"hub:{spec.load_id}:{spec.hub_config}"
               for spec, src in resolved]
    parts = {"format_version": DATA_FORMAT_VERSION, "data_path": list(r.data_path), "sources": sources,
             "sft_only": list(r.sft_only), "split": r.data_split, "phase": r.train_phase, "seed": r.seed,
             "max_seq_len": r.max_seq_len, "eot": r.end_of_conversation_token,
             "tokenizer": tokenizer_fingerprint(tokenizer),
             "blend_weights": list(r.blend_weights) if r.blend_weights is not None else None}
    kinds = {spec.kind for spec, _ in resolved}
    if "messages" in kinds:  # chats: the template that renders them changes the ids
        if len(kinds) > 1:
            raise SFTError("--data_path: messages sets cannot be blended with prompt/chosen sets; give one kind")
        parts["chat_template"] = chat_template_of(tokenizer)
    if any(src is None for _, src in resolved):  # hub sets: include their cached fingerprints
        parts["hub"] = [fingerprint_source(spec, None, load_hub(spec)) for spec, src in resolved if src is None]
    return parts


def create_prompt_dataset(local_rank, data_path, data_split, output_path, train_phase, seed, tokenizer,
                          max_seq_len, end_of_conversation_token="<|endoftext|>", sft_only_data_path=(),
                          reload=False, blend_weights=None, mask_prompt=False, pad_to_max_len=True,
                          num_proc=None, train_on_padding=False, wait_timeout=7200.0, run_id=None):
    """Train and eval ``PromptDataset`` for ``train_phase``: DeepSpeed-Chat's signature and result.

    The tokenized sets are cached under ``output_path/prompt_dataset_<key>/`` (Arrow); the key is
    ``cache_key_parts``. Local rank 0 of each node builds (under a file lock, so a folder shared by
    several nodes is built once and the others find it complete), as DeepSpeed-Chat; the node's other
    ranks poll for the finished cache for at most ``wait_timeout`` seconds. ``run_id`` (the same on
    every rank of one job) ties a builder's failure marker to this job, so a marker left by an
    earlier run is never taken for this one's. A damaged cache is rebuilt with a warning.
    ``mask_prompt``, ``pad_to_max_len`` and ``train_on_padding`` (the 2023 labels) only change how
    samples are read, not the cache.
    """
    from filelock import FileLock

    if train_phase not in (1, 2, 3):
        raise SFTError(f"train_phase must be 1, 2 or 3 (got {train_phase})")
    parse_data_split(data_split)
    data_path = [data_path] if isinstance(data_path, str) else list(data_path)
    if blend_weights is not None:
        if len(blend_weights) != len(data_path) or any(w < 0 for w in blend_weights) or sum(blend_weights) <= 0:
            raise SFTError(f"--data_weights {blend_weights}: give one non-negative weight per --data_path "
                           f"({len(data_path)}), not all zero")
    request = BuildRequest(tuple(data_path), data_split, output_path, train_phase, seed, max_seq_len,
                           end_of_conversation_token, tuple(sft_only_data_path or ()),
                           None if blend_weights is None else tuple(blend_weights), num_proc, local_rank)
    key_parts = cache_key_parts(request, tokenizer)
    os.makedirs(output_path, exist_ok=True)
    folder = Path(output_path) / f"prompt_dataset_{cache_key(key_parts)}"
    if local_rank <= 0:
        with FileLock(f"{folder}.lock"):
            _build_if_needed(folder, reload, key_parts, request, tokenizer, run_id)
    else:
        wait_for_cache(folder, timeout_s=wait_timeout, run_id=run_id)
    return load_prompt_datasets(folder, tokenizer.pad_token_id, train_phase, max_seq_len, mask_prompt,
                                pad_to_max_len, train_on_padding)


def _build_if_needed(folder: Path, reload: bool, key_parts: dict, request: BuildRequest, tokenizer,
                     run_id=None) -> None:
    import datasets

    problem = cache_problem(folder)
    if problem is None and not reload:
        return
    if problem != "missing" and not reload:
        warnings.warn(f"dataset cache {folder} is damaged ({problem}); rebuilding it", stacklevel=3)
    failed = Path(f"{folder}.failed")
    failed.unlink(missing_ok=True)
    try:
        t0 = time.time()
        quiet = datasets.utils.are_progress_bars_disabled()
        datasets.disable_progress_bars()
        try:
            train, evals, stats = build_prompt_datasets(request, tokenizer)
            save_cache(folder, train, evals, {"key": key_parts, "train_rows": len(train), "eval_rows": len(evals),
                                              "stats": stats, "build_seconds": round(time.time() - t0, 3)})
        finally:
            if not quiet:
                datasets.utils.enable_progress_bars()
        print(f"built dataset cache {folder.name[:28]}... ({len(train)} train / {len(evals)} eval rows, "
              f"{time.time() - t0:.1f} s)", flush=True)
    except BaseException as err:
        failed.write_text(json.dumps({"run_id": run_id, "error": f"local rank 0 (global rank {global_rank()}) "
                                      f"could not build the dataset cache: {err}"}))
        raise
