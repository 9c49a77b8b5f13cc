"""Loading rows, from local files and folders or the hub, through ``datasets``; and what the cache
key knows about them (``fingerprint_source``). Errors name the file and line to fix."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from sftlib.data.messages import arrow_conversations_ok, conversation_problem
from sftlib.data.registry import DatasetSpec
from sftlib.errors import SFTError

SPLIT_FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".arrow")


def read_json_rows(path: str | os.PathLike, required=("prompt", "chosen"), check=None) -> list[dict]:
    """Rows of a json-lines file or a json list; errors name the file and line to fix. ``check(row)``,
    if given, returns what is wrong with a row (or None)."""
    path = Path(path)
    if not path.is_file():
        raise SFTError(f"data file {path} does not exist")
    return _json_rows(_decode(path.read_bytes(), path), path, required, check)


def _json_rows(text: str, path: Path, required, check=None) -> list[dict]:
    """``read_json_rows`` on a file's text: every row an object with the ``required`` keys, passing ``check``."""
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise SFTError(f"{path}:{e.lineno}: malformed json ({e.msg})") from None
        numbered, where = list(enumerate(rows)), "row"
    else:
        numbered, where = [], "line"
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise SFTError(f"{path}:{lineno}: malformed json line ({e.msg})") from None
    for n, row in numbered:
        problem = _row_problem(row, where, required, check)
        if problem:
            line = _list_item_line(text, n) if where == "row" else n
            raise SFTError(f"{path}:{line}: {problem}")
    if not numbered:
        raise SFTError(f"{path}: the dataset is empty")
    return [row for _, row in numbered]


def _row_problem(row, where: str, required, check) -> str | None:
    if not isinstance(row, dict):
        return f"each {where} must be a json object"
    missing = [k for k in required if k not in row]
    if missing:
        return f"{where} is missing {', '.join(repr(m) for m in missing)}"
    return check(row) if check is not None else None


def _list_item_line(text: str, index: int) -> int:
    """The line (1-based) on which item ``index`` of the json list ``text`` starts."""
    decoder, gap = json.JSONDecoder(), re.compile(r"[\s,]*")
    pos = text.index("[") + 1
    for _ in range(index):
        pos = decoder.raw_decode(text, gap.match(text, pos).end())[1]
    return text.count("\n", 0, gap.match(text, pos).end()) + 1


def _decode(raw: bytes, path: Path) -> str:
    """A file's bytes as text; bytes that are not UTF-8 are an error naming the file, line and column."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise SFTError(f"{path}:{line}: byte 0x{raw[err.start]:02x} at column {column} is not UTF-8; "
                       "save the file as UTF-8") from None


def _fast_json(raw: bytes, required, digest: str):
    """json lines parsed by Arrow's C++ reader (the dataset's fingerprint is the bytes' ``digest``, not a
    hash of the table); None whenever anything looks off (then the slow reader runs and reports the
    exact line)."""
    import datasets
    import pyarrow as pa
    import pyarrow.json as pj

    if raw[:64].lstrip()[:1] in (b"[", b""):
        return None
    try:
        table = pj.read_json(pa.BufferReader(raw), read_options=pj.ReadOptions(block_size=1 << 24))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError):
        return None
    if table.num_rows == 0 or any(k not in table.column_names or table.column(k).null_count for k in required):
        return None
    return datasets.Dataset(table, fingerprint=digest[:32])


def _row_check(spec: DatasetSpec):
    """What each row of ``spec``'s files must pass beyond having the required keys (chats: their turns)."""
    if spec.kind != "messages":
        return None
    return lambda row: conversation_problem(row.get("messages"))


def _check_rows(ds, spec: DatasetSpec, where: str) -> None:
    """Chats loaded from parquet, arrow or a saved dataset: every row's turns, in Arrow first."""
    if spec.kind != "messages" or "messages" not in ds.column_names:
        return
    if arrow_conversations_ok(ds.data.column("messages")):
        return
    for i, messages in enumerate(ds["messages"]):
        problem = conversation_problem(messages)
        if problem:
            raise SFTError(f"{where}: row {i + 1}: {problem}")


def _load_file(path: Path, spec: DatasetSpec, digests: dict):
    """One local file as a ``datasets.Dataset``, its bytes read once: their sha256 goes to ``digests``
    (the cache key's), and json/jsonl are checked row by row from the same bytes."""
    import datasets

    raw = path.read_bytes()
    digests[path] = hashlib.sha256(raw).hexdigest()
    required = spec.required_keys()
    if path.suffix in (".json", ".jsonl"):
        text = _decode(raw, path)  # Arrow's json reader would pass bad bytes on silently
        fast = _fast_json(raw, required, digests[path])
        if fast is not None and (spec.kind != "messages" or arrow_conversations_ok(fast.data.column("messages"))):
            return fast
        rows = _json_rows(text, path, required, _row_check(spec))  # slow, but names the file and line of a problem
        try:
            return datasets.Dataset.from_list(rows)
        except Exception as err:  # arrow type clashes between rows
            raise SFTError(f"{path}: rows disagree on a field's type ({str(err).splitlines()[0][:120]})") from None
    kind = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}.get(path.suffix)
    if kind is None:
        raise SFTError(f"{path}: unsupported file type; use json, jsonl, parquet, csv or arrow")
    if kind == "csv":
        _decode(raw, path)  # datasets' csv reader would fail with a traceback on bad bytes
    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as err:  # a corrupt parquet/arrow file, a ragged csv row...
        raise SFTError(f"{path}: cannot be read as {kind} ({str(err).splitlines()[0][:160]})") from None
    _check_columns(ds, required, str(path))
    _check_rows(ds, spec, str(path))
    return ds


def select_rows(ds, indices):
    """``ds.select(indices)`` as a new table, taken by Arrow in one call, with a cheap fingerprint.

    ``datasets``' own ``select`` keeps an index mapping, whose every later read gathers one row at a time
    (a fifth of tokenizing 400k rows), and it would dill-hash the whole index list."""
    import datasets
    import pyarrow as pa

    order = np.asarray(list(indices), dtype=np.int64)
    tag = hashlib.sha256(order.tobytes() + ds._fingerprint.encode()).hexdigest()[:32]
    if getattr(ds, "_indices", None) is not None:  # a mapping made elsewhere: datasets composes it
        return ds.select(order.tolist(), new_fingerprint=tag)
    return datasets.Dataset(ds.data.table.take(pa.array(order)), info=ds.info.copy(), fingerprint=tag)


def _check_columns(ds, required, where: str):
    if len(ds) == 0:
        raise SFTError(f"{where}: the dataset is empty")
    missing = [k for k in required if k not in ds.column_names]
    if missing:
        raise SFTError(f"{where}: rows are missing {', '.join(repr(m) for m in missing)} "
                       f"(columns: {', '.join(ds.column_names)})")


def _split_file(folder: Path, split: str) -> Path | None:
    for suffix in SPLIT_FILE_SUFFIXES:
        for cand in (folder / f"{split}{suffix}", folder / "data" / f"{split}{suffix}"):
            if cand.is_file():
                return cand
    found = sorted(folder.glob(f"{split}-*.parquet")) + sorted(folder.glob(f"data/{split}-*.parquet"))
    return found[0] if found else None


def load_local(spec: DatasetSpec, source: str) -> tuple[dict, str]:
    """({split: datasets.Dataset}, fingerprint) from a file, a folder of split files, or a ``save_to_disk``
    folder; each file is read once, for its rows and its part of the fingerprint (``fingerprint_source``)."""
    import datasets

    path = Path(source).expanduser()
    if not path.exists():
        raise SFTError(f"data path {path} does not exist")
    digests: dict = {}
    if path.is_file():
        return {spec.train_split: _load_file(path, spec, digests)}, fingerprint_source(spec, source, digests=digests)
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        loaded = datasets.load_from_disk(str(path))  # memory-mapped: the fingerprint reads the bytes
        splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {spec.train_split: loaded}
        for split, ds in splits.items():
            _check_columns(ds, spec.required_keys(), f"{path} ({split})")
            _check_rows(ds, spec, f"{path} ({split})")
        return splits, fingerprint_source(spec, source)
    out = {}
    for split in [spec.train_split] + ([spec.eval_split] if spec.eval_split else []):
        file = _split_file(path, split)
        if file is None:
            raise SFTError(f"data folder {path} has no {split}.json or {split}.jsonl "
                           f"(also tried {', '.join(SPLIT_FILE_SUFFIXES[2:])}, data/{split}-*.parquet)")
        out[split] = _load_file(file, spec, digests)
    return out, fingerprint_source(spec, source, digests=digests)


def row_location(source: str, split: str, index: int) -> str:
    """Where row ``index`` (0-based) of a local set's ``split`` is: ``file:line`` for json and json lines,
    else the file (or folder) and the row number."""
    path = Path(source).expanduser()
    if path.is_dir():
        found = _split_file(path, split)
        if found is None:
            return f"{path} ({split}): row {index + 1}"
        path = found
    if path.suffix in (".json", ".jsonl"):
        text = _decode(path.read_bytes(), path)
        if text.lstrip().startswith("["):
            return f"{path}:{_list_item_line(text, index)}"
        seen = -1
        for lineno, line in enumerate(text.splitlines(), start=1):
            seen += bool(line.strip())
            if seen == index:
                return f"{path}:{lineno}"
    return f"{path}: row {index + 1}"


def load_hub(spec: DatasetSpec) -> dict:
    """{split: datasets.Dataset} through ``datasets.load_dataset(hub id)``; offline -> a clear error."""
    import datasets

    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        hint = "offline (HF_HUB_OFFLINE=1)"
    else:
        hint = "the hub could not be reached"
    try:
        loaded = datasets.load_dataset(spec.load_id, spec.hub_config)
    except Exception as err:  # network, missing cache, removed dataset script...
        raise SFTError(f"dataset {spec.name!r}: could not load {spec.load_id!r} ({hint}: {type(err).__name__}); "
                       f"give a local copy: --data_path {spec.name}=/path/to/file_or_folder") from None
    for split, ds in loaded.items():
        _check_columns(ds, spec.required_keys(), f"{spec.load_id} ({split})")
    return dict(loaded)


def hash_file(h, path) -> None:
    """Feed a file's bytes to the hash object ``h`` (1 MiB at a time)."""
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)


def fingerprint_source(spec: DatasetSpec, source: str | None, splits: dict | None = None,
                       digests: dict | None = None) -> str:
    """What the cache key knows about the rows: the spec, and every local file's name and sha256 (taken
    from ``digests``, {Path: hex}, for the files already read), or the hub splits' fingerprints."""
    h = hashlib.sha256(repr(dataclasses.astuple(spec)).encode())
    if source is None:
        for split in sorted(splits or {}):
            h.update(f"{split}:{splits[split]._fingerprint}".encode())
        return h.hexdigest()
    path = Path(source).expanduser()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        digest = (digests or {}).get(f)
        if digest is None:
            one = hashlib.sha256()
            hash_file(one, f)
            digest = one.hexdigest()
        h.update(digest.encode())
    return h.hexdigest()
