"""Chat datasets: rows with a ``messages`` list, rendered with the tokenizer's chat template, with
labels on the assistant turns only.

A row is ``{"messages": [{"role": "system", "content": ...}, {"role": "user", ...},
{"role": "assistant", ...}, ...]}`` (the system turn is optional; any number of turns), the format
TRL, LLaMA-Factory, axolotl, torchtune and OpenRLHF take. Name such a set ``--data_path
messages=path/to/rows.jsonl`` (or a folder with ``train``/``eval`` files); a bare local path whose
first row has a ``messages`` list is recognised too (see data_cards/messages.md).

Each conversation is rendered with ``tokenizer.chat_template`` (``--chat_template FILE`` sets one
for a tokenizer that has none) and tokenized once. Labels cover every assistant turn, its
end-of-turn token included, and nothing else. A template with ``{% generation %}`` blocks gets its
mask from transformers (``return_assistant_tokens_mask``); for any other template the assistant
spans come from rendering prefixes of the conversation: turn i's text starts where the rendering of
turns ``[:i]`` with the generation prompt ends and stops where the rendering of turns ``[:i+1]``
ends (trailing whitespace after the end-of-turn token excluded).

Explained in notebooks/07_real_model.ipynb.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sftlib.errors import SFTError

KIND = "messages"
ROLES = ("system", "user", "assistant", "tool")
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


def chat_template_of(tokenizer) -> str:
    """The tokenizer's chat template; a one-line error naming ``--chat_template FILE`` if it has none."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one
        template = template.get("default")
    if not template:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise SFTError(f"the tokenizer of {name} has no chat template, which messages data needs; "
                       "give one with --chat_template FILE (a Jinja file)")
    return template


def load_chat_template(tokenizer, path) -> str:
    """Read a Jinja chat template from ``path`` and set it on ``tokenizer`` (saved with it)."""
    path = Path(path)
    if not path.is_file():
        raise SFTError(f"--chat_template {path}: no such file")
    tokenizer.chat_template = path.read_text(encoding="utf-8")
    return tokenizer.chat_template


def conversation_problem(messages) -> str | None:
    """What is wrong with one row's ``messages`` (None: nothing): it must be a non-empty list of turns,
    each a string ``role`` among ``ROLES`` and a string ``content``, not opening with an assistant turn."""
    if not isinstance(messages, (list, tuple)) or not messages:
        return "'messages' must be a non-empty list of {role, content} objects"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return f"messages[{i}] needs a string 'role' and a string 'content'"
        if m["role"] not in ROLES:
            return f"messages[{i}] has the role {m['role']!r}; a turn's role is {', '.join(ROLES[:-1])} or {ROLES[-1]}"
    if messages[0]["role"] == "assistant":
        return "the conversation starts with an assistant turn; start with a user (or system) turn"
    return None


def clean_conversation(messages, where: str = "row") -> list[dict] | None:
    """The turns as plain ``{"role", "content", ...}`` dicts (Arrow's None-filled keys dropped);
    None when the conversation has no assistant turn. Malformed turns are a one-line error."""
    problem = conversation_problem(messages)
    if problem:
        raise SFTError(f"{where}: {problem}")
    out = [{k: v for k, v in m.items() if v is not None} for m in messages]
    return out if any(m["role"] == "assistant" for m in out) else None


def arrow_conversations_ok(column) -> bool:
    """True when every row of an Arrow ``messages`` column passes ``conversation_problem`` (checked in
    Arrow, without building Python rows); False when some row may not (then rows are checked one by one,
    which names the line)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not pa.types.is_struct(kind.value_type):
        return False
    fields = {f.name: f.type for f in kind.value_type}
    if fields.get("role") != pa.string() or fields.get("content") != pa.string():
        return False
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(col) == 0 or col.null_count or pc.min(pc.list_value_length(col)).as_py() == 0:
        return False
    turns = pc.list_flatten(col)
    roles, contents = pc.struct_field(turns, "role"), pc.struct_field(turns, "content")
    if turns.null_count or roles.null_count or contents.null_count:
        return False
    if not pc.all(pc.is_in(roles, value_set=pa.array(ROLES))).as_py():
        return False
    return not pc.any(pc.equal(pc.struct_field(pc.list_element(col, 0), "role"), "assistant")).as_py()


def first_row_with_role(column, role: str) -> int | None:
    """Index of the first row of an Arrow ``messages`` column with a ``role`` turn (None: no such row)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    hits = pc.indices_nonzero(pc.fill_null(pc.equal(pc.struct_field(pc.list_flatten(col), "role"), role), False))
    if len(hits) == 0:
        return None
    return pc.list_parent_indices(col)[hits[0].as_py()].as_py()


def tool_turn_problem(splits: dict, tokenizer) -> tuple[str, int, str] | None:
    """A ``tool`` turn is taken only if the chat template renders it: the first row holding one (in
    ``splits``, {split: datasets.Dataset}) is rendered; a template that fails on it or drops its text
    gives (split, row index, what is wrong). ``system``, ``user`` and ``assistant`` every template renders."""
    template = chat_template_of(tokenizer)
    for split, ds in splits.items():
        row = first_row_with_role(ds.data.column("messages"), "tool")
        if row is None:
            continue
        conv = clean_conversation(ds[row]["messages"], "a messages row") or []
        fix = "give a template that renders tool turns (--chat_template FILE) or drop them"
        try:
            text = _render(tokenizer, template, conv)
        except Exception as err:  # jinja's TemplateError, raise_exception(...) in the template
            first = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
            return split, row, f"the chat template cannot render this row's tool turn ({first}); {fix}"
        dropped = [i for i, m in enumerate(conv) if m["role"] == "tool" and m["content"].strip()
                   and m["content"] not in text]
        if dropped:
            return split, row, (f"messages[{dropped[0]}] has the role 'tool', which the chat template does not render "
                                f"(its text would be dropped); {fix}")
    return None


def _render(tokenizer, template: str, messages, add_generation_prompt=False) -> str:
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def assistant_char_spans(tokenizer, messages: list[dict], template: str | None = None) -> tuple[str, list]:
    """(rendered conversation, [(start, end) character span of each assistant turn]), by rendering
    prefixes. A template whose prefixes are not prefixes of the whole rendering is an error."""
    template = template or chat_template_of(tokenizer)
    text = _render(tokenizer, template, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, template, messages[:i], add_generation_prompt=True)
        through = _render(tokenizer, template, messages[:i + 1])
        if not (through.startswith(before) and text.startswith(through)):
            raise SFTError("the chat template renders a conversation's beginning differently from the whole "
                           "conversation, so assistant turns cannot be located; use a template with "
                           "{% generation %} blocks (--chat_template FILE)")
        spans.append((len(before), len(through.rstrip())))
    return text, spans


def _mask_from_offsets(offsets, spans) -> list[int]:
    """1 for each token overlapping an assistant span (special tokens included), else 0."""
    return [int(any(s < end and e > start for start, end in spans)) for s, e in offsets]


def encode_conversations(tokenizer, conversations: list[list[dict]], max_seq_len: int,
                         template: str | None = None) -> dict:
    """Token ids, a 0/1 label mask (assistant tokens), the count of tokens before the first assistant
    token and the untruncated length of each conversation; ids and masks cut to ``max_seq_len``."""
    template = template or chat_template_of(tokenizer)
    ids, masks = [], []
    if _GENERATION.search(template):
        for conv in conversations:
            out = tokenizer.apply_chat_template(conv, chat_template=template, tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
            ids.append(list(out["input_ids"]))
            masks.append(list(out["assistant_masks"]))
    else:
        rendered = [assistant_char_spans(tokenizer, conv, template) for conv in conversations]
        texts = [t for t, _ in rendered]
        backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
        if backend is not None:
            backend.no_truncation()
            backend.no_padding()
            encs = backend.encode_batch(texts, add_special_tokens=False)
            pairs = [(e.ids, e.offsets) for e in encs]
        else:
            enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
            pairs = list(zip(enc["input_ids"], enc["offset_mapping"]))
        for (tok_ids, offsets), (_, spans) in zip(pairs, rendered):
            ids.append(list(tok_ids))
            masks.append(_mask_from_offsets(offsets, spans))
    first = [m.index(1) if 1 in m else len(m) for m in masks]
    return {"input_ids": [x[:max_seq_len] for x in ids], "label_mask": [m[:max_seq_len] for m in masks],
            "prompt_tokens": [min(f, max_seq_len) for f in first], "full_length": [len(x) for x in ids]}


def messages_batch(batch: dict, tokenizer, max_seq_len: int) -> dict:
    """One chunk of phase-1 rows (columns as lists) with ``messages`` -> ids and label masks
    (rows without an assistant turn are skipped, as the original skips rows with a None text)."""
    convs = [clean_conversation(m, "a messages row") for m in batch["messages"]]
    return encode_conversations(tokenizer, [c for c in convs if c is not None], max_seq_len)


def looks_like_messages(path) -> bool:
    """True when a local json/jsonl file (or a folder's ``train`` file) starts with a row holding a
    ``messages`` list: how a bare ``--data_path`` folder of chats is recognised."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = [path / f"train{s}" for s in (".json", ".jsonl") if (path / f"train{s}").is_file()]
        if not found:
            return False
        path = found[0]
    if path.suffix not in (".json", ".jsonl") or not path.is_file():
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        head = f.read(4096)
    if re.match(r'\s*\[\s*\{\s*"messages"\s*:\s*\[', head):
        return True
    try:
        row = json.loads(head.splitlines()[0]) if head.strip() else None
    except (json.JSONDecodeError, IndexError):
        return False
    return isinstance(row, dict) and isinstance(row.get("messages"), list)
