"""The cache: Arrow, keyed on everything that changes the tensors, verified by a manifest, built
by each node's local rank 0 while the node's other ranks poll for it (no collective, so no
collective timeout; a bounded wait)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from sftlib.data.prompt_dataset import PromptDataset
from sftlib.data.sources import hash_file
from sftlib.dist import global_rank
from sftlib.errors import ReportedElsewhere, SFTError

DATA_FORMAT_VERSION = 1  # bump when anything changes what a cached dataset holds


def tokenizer_fingerprint(tokenizer) -> dict:
    """What of the tokenizer changes the ids: its files, added tokens, special tokens, sides."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the backend's json, minus the truncation/padding state the last call left
        body = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        body = json.dumps(body, sort_keys=True)
    else:
        body = repr(sorted(tokenizer.get_vocab().items()))
    return {"class": type(tokenizer).__name__, "name": str(getattr(tokenizer, "name_or_path", "")),
            "length": len(tokenizer), "added": sorted(tokenizer.get_added_vocab().items()),
            "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
            "padding_side": tokenizer.padding_side, "truncation_side": tokenizer.truncation_side,
            "body": hashlib.sha256(body.encode()).hexdigest()}


def cache_key(parts: dict) -> str:
    """sha256 of the key parts as canonical json (the cache folder is ``prompt_dataset_<key>``)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def manifest(folder: Path) -> dict:
    """{file: [size, sha256]} of every file under a cache folder but its meta.json (what meta.json lists)."""
    out = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "meta.json"):
        h = hashlib.sha256()
        hash_file(h, f)
        out[str(f.relative_to(folder))] = [f.stat().st_size, h.hexdigest()]  # lists: compare equal to json
    return out


def cache_problem(folder: Path) -> str | None:
    """None when the cache folder is complete and intact, else what is wrong with it."""
    meta = folder / "meta.json"
    if not folder.is_dir():
        return "missing"
    try:
        info = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        return "meta.json missing or unreadable (an interrupted build?)"
    if info.get("format_version") != DATA_FORMAT_VERSION:
        return "written by another sftlib data format version"
    if info.get("train_rows") == 0 or info.get("eval_rows") == 0:  # left by a version that cached them
        return "it holds an empty split"
    expected, actual = info.get("files", {}), manifest(folder)
    if actual != expected:
        bad = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
        return f"files truncated, changed or missing: {', '.join(bad[:3])}"
    return None


def wait_for_cache(folder: Path, poll_s: float = 0.5, say_every_s: float = 60.0, timeout_s: float = 7200.0,
                   run_id=None) -> None:
    """Ranks other than their node's local rank 0 poll for a complete cache: no collective, so no
    collective timeout, but never longer than ``timeout_s``. A failure the builder recorded
    (``<folder>.failed``) for this job (``run_id``) ends the wait too; the builder itself reports it."""
    started, last_say = time.time(), time.time()
    failed = Path(f"{folder}.failed")
    while True:
        if cache_problem(folder) is None:
            return
        if _failure_of(failed, run_id, started) is not None:
            raise ReportedElsewhere(_failure_of(failed, run_id, started))  # the builder prints it
        if time.time() - started > timeout_s:
            raise SFTError(f"gave up after {timeout_s:g} s waiting for this node's local rank 0 to build the dataset "
                           f"cache {folder}; see that rank's log, or raise --data_cache_timeout")
        if time.time() - last_say >= say_every_s:
            print(f"process {os.getpid()} (rank {global_rank()}): waiting for local rank 0 to build the dataset "
                  f"cache {folder}", flush=True)
            last_say = time.time()
        time.sleep(poll_s)


def _failure_of(marker: Path, run_id, started: float) -> str | None:
    """The builder's error in ``marker`` when it belongs to this job: the same ``run_id``, or (without
    one) written after this rank started waiting. Anything else is stale and ignored."""
    try:
        info = json.loads(marker.read_text())
        mtime = marker.stat().st_mtime
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    mine = info.get("run_id") == run_id if run_id is not None else mtime >= started
    return info.get("error") or "the dataset cache build failed" if mine else None


def save_cache(folder: Path, train, evals, info: dict) -> None:
    """Save (train, eval) Arrow tables and ``meta.json`` (``info`` + format version + manifest) to
    ``folder``: written to a temporary folder, then renamed, so a reader never sees a half-written cache.
    An empty split is never written (the build reports it in one line before it gets here)."""
    if len(train) == 0 or len(evals) == 0:
        raise SFTError(f"not caching an empty split in {folder} ({len(train)} train / {len(evals)} eval rows)")
    tmp = Path(f"{folder}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    train.save_to_disk(str(tmp / "train"))
    evals.save_to_disk(str(tmp / "eval"))
    info = {**info, "format_version": DATA_FORMAT_VERSION, "files": manifest(tmp)}
    (tmp / "meta.json").write_text(json.dumps(info, indent=1, default=str))
    if folder.exists():
        stale = Path(f"{folder}.stale-{os.getpid()}")
        os.replace(folder, stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(tmp, folder)


def load_prompt_datasets(folder, pad_token_id, train_phase, max_seq_len, mask_prompt=False, batching="compat",
                         labels_2023=False):
    """(train, eval) ``PromptDataset`` from a cache folder."""
    import datasets

    folder = Path(folder)
    train = datasets.load_from_disk(str(folder / "train"))
    evals = datasets.load_from_disk(str(folder / "eval"))
    kw = dict(mask_prompt=mask_prompt, batching=batching, labels_2023=labels_2023)
    return (PromptDataset(train, pad_token_id, train_phase, max_seq_len, **kw),
            PromptDataset(evals, pad_token_id, train_phase, max_seq_len, **kw))


def cache_size_bytes(folder) -> int:
    """Bytes on disk under a folder (or one file)."""
    folder = Path(folder)
    if folder.is_file():
        return folder.stat().st_size
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
