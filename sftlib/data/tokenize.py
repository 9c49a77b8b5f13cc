"""Tokenization: the original one-at-a-time recipe, and the batched one that gives the same ids.

The batched path calls a fast tokenizer's Rust backend on chunks of rows (in worker processes for big
sets) and writes the unpadded int32 ids straight into Arrow (plus, in phase 1, how many leading
tokens belong to the prompt); ``PromptDataset`` pads when read. ``datasets.map`` did the same work
with per-batch conversions and bookkeeping that cost more than the tokenizing itself.
"""

from __future__ import annotations

import hashlib
import os
import warnings

from sftlib.data.messages import messages_batch
from sftlib.data.raw import PromptRawDataset
from sftlib.data.registry import parse_template
from sftlib.errors import SFTError


def tokenize_one_at_a_time(texts: list[str], tokenizer, max_seq_len: int) -> list[dict]:
    """The original recipe: one tokenizer call per sample, padded to ``max_seq_len``, int64."""
    out = []
    for text in texts:
        tok = tokenizer(text, max_length=max_seq_len, padding="max_length", truncation=True, return_tensors="pt")
        out.append({"input_ids": tok["input_ids"].squeeze(0), "attention_mask": tok["attention_mask"].squeeze(0)})
    return out


def _prompt_boundary(prompt: str | None, joined: str) -> int:
    if prompt is None:
        return 0
    return len(prompt) if joined.startswith(prompt) else len(os.path.commonprefix([prompt, joined]))


def _encode(tokenizer, texts, max_seq_len, truncate=True):
    """Batched encoding; rows longer than ``max_seq_len`` are re-encoded with truncation so the
    ids equal what ``truncation=True`` gives. Returns (ids, full lengths, backend encodings or None).

    Fast tokenizers are called through their Rust backend directly (the same ids as
    ``tokenizer(texts)``, without building Python ``BatchEncoding`` objects)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    encs = None
    if backend is not None:
        backend.no_truncation()
        backend.no_padding()
        encs = backend.encode_batch(texts, add_special_tokens=True)
        ids = [e.ids for e in encs]
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ids = tokenizer(texts, truncation=False)["input_ids"]
    lengths = [len(x) for x in ids]
    long_rows = [i for i, n in enumerate(lengths) if n > max_seq_len]
    if truncate and long_rows:
        cut = tokenizer([texts[i] for i in long_rows], truncation=True, max_length=max_seq_len)["input_ids"]
        for j, i in enumerate(long_rows):
            ids[i] = cut[j]
    return ids, lengths, encs


def _prompt_token_counts(tokenizer, texts, bounds, ids, encs) -> list[int]:
    """How many leading tokens belong to the prompt: those before the token holding the first
    response character (a token straddling the boundary counts as response)."""
    if encs is None:  # slow tokenizers: tokenize the prompt part on its own
        return [min(len(tokenizer(t[:b])["input_ids"]), len(x)) for t, b, x in zip(texts, bounds, ids)]
    out = []
    for enc, b, x in zip(encs, bounds, ids):
        k = enc.char_to_token(b)
        if k is None:  # the boundary char belongs to no token (e.g. stripped): scan the offsets
            k = _count_prompt_tokens(enc.offsets, b)
        out.append(min(k, len(x)))
    return out


def _count_prompt_tokens(offsets, boundary: int) -> int:
    for i, (_, end) in enumerate(offsets):
        if end > boundary:
            return i
    return len(offsets)


def _render_columns(template: str, batch: dict) -> list | None:
    """A template rendered for a whole batch at once, when every placeholder is a plain column
    (no dots) and the template is only placeholders and literals; else None (render per row)."""
    parts = parse_template(template)
    if any(path is not None and ("." in path or path not in batch) for _, path in parts):
        return None
    cols = [batch[path] for _, path in parts if path is not None]
    lits = [lit for lit, _ in parts]
    if len(cols) == 1 and lits == ["", ""]:
        return [v if v is None or isinstance(v, str) else str(v) for v in cols[0]]
    out = []
    for values in zip(*cols):
        if any(v is None for v in values):
            out.append(None)
            continue
        text = lits[0]
        for v, lit in zip(values, lits[1:]):
            text += (v if isinstance(v, str) else str(v)) + lit
        out.append(text)
    return out


def _phase1_texts(batch: dict, raw) -> tuple[list, list]:
    """(prompt boundaries, prompt+chosen texts) of the usable rows of a batch."""
    spec = raw.spec
    if spec.transform is None and spec.prompt_and_chosen is None:
        prompts, chosen = _render_columns(spec.prompt, batch), _render_columns(spec.chosen, batch)
        if prompts is not None and chosen is not None:
            pairs = [(len(p), p + c) for p, c in zip(prompts, chosen) if p is not None and c is not None]
            return [b for b, _ in pairs], [t for _, t in pairs]
    keys = list(batch)
    bounds, texts = [], []
    for vals in zip(*batch.values()):
        prompt, joined = raw.prompt_and_chosen_pair(dict(zip(keys, vals)))
        if joined is not None:
            texts.append(joined)
            bounds.append(_prompt_boundary(prompt, joined))
    return bounds, texts


def _phase_batch(batch, raw, train_phase, tokenizer, eot, max_seq_len):
    """One chunk of rows (columns as lists) -> unpadded token ids (+ prompt token counts)."""
    if raw.spec.kind == "messages":
        return messages_batch(batch, tokenizer, max_seq_len)
    if train_phase == 1:
        prompts, texts = _phase1_texts(batch, raw)
        texts = [t + eot for t in texts]
        ids, lengths, encs = _encode(tokenizer, texts, max_seq_len)
        n_prompt = _prompt_token_counts(tokenizer, texts, prompts, ids, encs)
        return {"input_ids": ids, "prompt_tokens": n_prompt, "full_length": lengths}
    keys = list(batch)
    rows = [dict(zip(keys, vals)) for vals in zip(*batch.values())]
    if train_phase == 2:
        pairs = [(raw.get_prompt_and_chosen(r), raw.get_prompt_and_rejected(r)) for r in rows]
        pairs = [(c + eot, r + eot) for c, r in pairs if c is not None and r is not None]
        chosen, lc, _ = _encode(tokenizer, [c for c, _ in pairs], max_seq_len)
        rejected, lr, _ = _encode(tokenizer, [r for _, r in pairs], max_seq_len)
        return {"chosen_input_ids": chosen, "rejected_input_ids": rejected,
                "full_length": [max(a, b) for a, b in zip(lc, lr)]}
    prompts = [p for p in map(raw.get_prompt, rows) if p is not None]
    ids, lengths, _ = _encode(tokenizer, prompts, max_seq_len, truncate=False)
    return {"input_ids": ids, "full_length": lengths}  # phase 3 drops (not cuts) long prompts afterwards


CHUNK_ROWS = 4096  # rows tokenized per call (and per task of a worker process)


def _features(train_phase: int, chats: bool):
    """The Arrow layout of a tokenized split: unpadded int32 ids, int32 counts (chats: an int8 label mask)."""
    import pyarrow as pa

    ids, num = pa.list_(pa.int32()), pa.int32()
    fields = {1: [("input_ids", ids), ("prompt_tokens", num), ("full_length", num)],
              2: [("chosen_input_ids", ids), ("rejected_input_ids", ids), ("full_length", num)],
              3: [("input_ids", ids), ("full_length", num)]}[train_phase]
    return pa.schema(fields + ([("label_mask", pa.list_(pa.int8()))] if chats else []))


def _tokenize_chunk(batch: dict, job: tuple):
    """One chunk of rows (columns as lists) -> an Arrow record batch of ``_features``' layout."""
    import pyarrow as pa

    raw, train_phase, tokenizer, eot, max_seq_len, schema = job
    out = _phase_batch(batch, raw, train_phase, tokenizer, eot, max_seq_len)
    return pa.record_batch([pa.array(out[f.name], type=f.type) for f in schema], schema=schema)


_JOB = None  # a worker process's (raw, phase, tokenizer, eot, max_seq_len, schema), set once by _start_worker


def _start_worker(job: tuple) -> None:
    global _JOB
    _JOB = job


def _worker_chunk(batch: dict):
    return _tokenize_chunk(batch, _JOB)


def _chunks(rows, columns: list[str]):
    """The rows' needed columns, ``CHUNK_ROWS`` rows at a time, as {column: list}."""
    for start in range(0, len(rows), CHUNK_ROWS):
        part = rows[start:start + CHUNK_ROWS]
        yield {c: part[c] for c in columns}


def tokenize_split(rows, raw: PromptRawDataset, train_phase: int, tokenizer, end_of_conversation_token: str,
                   max_seq_len: int, num_proc: int | None = None):
    """Tokenize a ``datasets.Dataset`` of raw rows for ``train_phase``, ``CHUNK_ROWS`` rows per batched
    tokenizer call, straight into Arrow (several processes for big sets: ``num_proc``, by default up to
    4 from 50,000 rows, where a split takes seconds and starting workers, a tenth of a second, pays off).
    Returns an Arrow dataset of unpadded int32 ids."""
    import datasets
    import pyarrow as pa

    chats = raw.spec.kind == "messages"  # chats: a label mask marks the assistant tokens
    if chats and train_phase != 1:
        raise SFTError(f"{raw.dataset_name}: messages data is for phase 1 (SFT) only, not phase {train_phase}")
    if num_proc is None:
        num_proc = min(4, os.cpu_count() or 1) if len(rows) >= 50_000 else 1
    schema = _features(train_phase, chats)
    job = (PromptRawDataset.for_spec(raw.spec), train_phase, tokenizer, end_of_conversation_token, max_seq_len,
           schema)
    columns = [c for c in raw.columns_needed(train_phase) if c in rows.column_names]
    chunks = _chunks(rows, columns)
    if num_proc > 1 and len(rows) > CHUNK_ROWS:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(num_proc, _start_worker, (job,)) as pool:
            parts = list(pool.imap(_worker_chunk, chunks))
    else:
        parts = [_tokenize_chunk(batch, job) for batch in chunks]
    table = pa.Table.from_batches(parts, schema=schema)
    tag = hashlib.sha256(f"{rows._fingerprint}-{train_phase}-{max_seq_len}-{end_of_conversation_token}".encode())
    out = datasets.Dataset(table, fingerprint=tag.hexdigest()[:32])
    if train_phase == 3:
        before = len(out)
        out = out.filter(lambda n: n <= max_seq_len, input_columns="full_length", keep_in_memory=True)
        print(f"Creating dataset {raw.dataset_name_clean} for train_phase=3 size={len(out)} "
              f"filtered={before - len(out)}", flush=True)
    return out
