"""The cache: Arrow, keyed on everything that changes the tensors, verified by a manifest, built
once by global rank 0 while other ranks poll for it (no collective, so no collective timeout)."""

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
from sftlib.utils import SFTError

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


def _manifest(folder: Path) -> dict:
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
    expected, actual = info.get("files", {}), _manifest(folder)
    if actual != expected:
        bad = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
        return f"files truncated, changed or missing: {', '.join(bad[:3])}"
    return None


def wait_for_cache(folder: Path, poll_s: float = 0.5, say_every_s: float = 60.0) -> None:
    """Ranks other than 0 poll for a complete cache: no collective, so no collective timeout.
    A failure recorded by rank 0 (``<folder>.failed``) is raised here too."""
    started, last_say = time.time(), 0.0
    failed = Path(f"{folder}.failed")
    while True:
        if cache_problem(folder) is None:
            return
        if failed.is_file() and failed.stat().st_mtime >= started - 120:
            raise SFTError(failed.read_text().strip() or "rank 0 failed to build the dataset cache")
        if time.time() - last_say >= say_every_s:
            print(f"process {os.getpid()} (rank {global_rank()}): waiting for global rank 0 to build the dataset "
                  f"cache {folder}", flush=True)
            last_say = time.time()
        time.sleep(poll_s)


def save_cache(folder: Path, train, evals, info: dict) -> None:
    """Save (train, eval) Arrow tables and ``meta.json`` (``info`` + format version + manifest) to
    ``folder``: written to a temporary folder, then renamed, so a reader never sees a half-written cache."""
    tmp = Path(f"{folder}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    train.save_to_disk(str(tmp / "train"))
    evals.save_to_disk(str(tmp / "eval"))
    info = {**info, "format_version": DATA_FORMAT_VERSION, "files": _manifest(tmp)}
    (tmp / "meta.json").write_text(json.dumps(info, indent=1, default=str))
    if folder.exists():
        stale = Path(f"{folder}.stale-{os.getpid()}")
        os.replace(folder, stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(tmp, folder)


def load_prompt_datasets(folder, pad_token_id, train_phase, max_seq_len, mask_prompt=False, pad_to_max_len=True):
    """(train, eval) ``PromptDataset`` from a cache folder."""
    import datasets

    folder = Path(folder)
    train = datasets.load_from_disk(str(folder / "train"))
    evals = datasets.load_from_disk(str(folder / "eval"))
    kw = dict(mask_prompt=mask_prompt, pad_to_max_len=pad_to_max_len)
    return (PromptDataset(train, pad_token_id, train_phase, max_seq_len, **kw),
            PromptDataset(evals, pad_token_id, train_phase, max_seq_len, **kw))


def cache_size_bytes(folder) -> int:
    """Bytes on disk under a folder (or one file)."""
    folder = Path(folder)
    if folder.is_file():
        return folder.stat().st_size
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
