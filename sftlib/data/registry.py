"""Declarative dataset specs: every set DeepSpeed-Chat knows, and how a ``--data_path`` entry is resolved.

A ``DatasetSpec`` says how to read a row (field templates), which splits a set has and, for the few
sets templates cannot express, a named row transform. ``REGISTRY`` holds the built-in specs; users
add theirs with ``register_dataset`` or a json mapping file (see data_cards/README.md).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from pathlib import Path

from sftlib.data.messages import looks_like_messages
from sftlib.errors import SFTError

HA = " Human: {} Assistant:"  # DeepSpeed-Chat's wrapping of a bare question
PLACEHOLDER = re.compile(r"\{([^{}]+)\}")  # a template's ``{field.path}``


def row_keys(templates, extra=()) -> list[str]:
    """Top-level row keys that ``templates`` read (``{a.0.b}`` reads ``a``), then ``extra``: without
    duplicates, and without the ``_fields`` that transforms derive."""
    keys = [p.split(".")[0] for t in templates if t for p in PLACEHOLDER.findall(t)] + list(extra)
    return list(dict.fromkeys(k for k in keys if not k.startswith("_")))


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How to read one dataset. Templates hold ``{field.path}`` placeholders (dots index into
    dicts and lists); a placeholder whose value is missing or None makes the whole text None,
    and such rows are skipped, as the original skips None texts."""

    name: str                         # what users type, e.g. "Dahoas/rm-static"
    prompt: str                       # template of get_prompt
    chosen: str | None                # template of get_chosen
    rejected: str | None = None       # template of get_rejected (None: the set has none)
    hub_id: str | None = None         # what datasets.load_dataset gets (defaults to name)
    hub_config: str | None = None
    train_split: str = "train"
    eval_split: str | None = "test"   # None: 9:1 split of train ("train_eval" index files)
    prompt_and_chosen: str | None = None    # when it is not prompt + chosen
    prompt_and_rejected: str | None = None
    transform: str | None = None      # a named row transform, for the few sets templates can't express
    clean_name: str | None = None     # used in index file names
    language: str = "en"
    required: tuple = ()              # extra row keys a row must have (besides the templates')
    kind: str = "text"                # "messages": rows hold a chat (sftlib.data.messages), phase 1 only

    def __post_init__(self):
        if self.transform is not None and self.transform not in TRANSFORMS:
            raise SFTError(f"dataset {self.name!r}: unknown transform {self.transform!r} "
                           f"(known: {', '.join(TRANSFORMS)})")

    @property
    def dataset_name_clean(self) -> str:
        return self.clean_name or self.name.replace("/", "_").replace("-", "_")

    @property
    def load_id(self) -> str:
        return self.hub_id or self.name

    def required_keys(self, with_rejected: bool = False) -> list[str]:
        """Top-level row keys the prompt/chosen (and rejected) templates read."""
        return row_keys([self.prompt, self.chosen] + ([self.rejected] if with_rejected else []), self.required)


def get_field(row, path: str):
    """``get_field(row, "positive_passages.0.text")``; None when any step is missing."""
    value = row
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, (list, tuple)) and part.lstrip("-").isdigit():
            i = int(part)
            value = value[i] if -len(value) <= i < len(value) else None
        else:
            return None
        if value is None:
            return None
    return value


@functools.lru_cache(maxsize=256)
def parse_template(template: str) -> tuple:
    """A template as (literal, field path or None) pairs:
    ``" Human: {q} Assistant:"`` -> ((" Human: ", "q"), (" Assistant:", None))."""
    parts, last = [], 0
    for m in PLACEHOLDER.finditer(template):
        parts.append((template[last:m.start()], m.group(1)))
        last = m.end()
    parts.append((template[last:], None))
    return tuple(parts)


def render(template: str | None, row) -> str | None:
    """Fill a template from a row; None when the template or any value is None."""
    if template is None:
        return None
    out = []
    for literal, path in parse_template(template):
        out.append(literal)
        if path is not None:
            value = row.get(path) if "." not in path and isinstance(row, dict) else get_field(row, path)
            if value is None:
                return None
            out.append(value if isinstance(value, str) else str(value))
    return "".join(out)


# --------------------------------------------------------------------------------------------
# Row transforms: the few sets whose texts templates alone cannot express
# --------------------------------------------------------------------------------------------

def _webgpt(row):
    """Higher score wins (ties go to answer_0); bracketed/parenthesised spans are removed."""
    def clean(text):
        if text is None:
            return None
        text = re.sub(r" [\(\[].*?[\)\]]", "", text)
        return re.sub(r"[\(\[].*?[\)\]]", "", text)
    first = float(row["score_0"]) >= float(row["score_1"])
    win, lose = ("answer_0", "answer_1") if first else ("answer_1", "answer_0")
    return {**row, "_chosen": clean(row.get(win)), "_rejected": clean(row.get(lose))}


def _shp(row):
    """labels == 1 means human_ref_A is preferred."""
    a_wins = int(row["labels"]) == 1
    win, lose = ("human_ref_A", "human_ref_B") if a_wins else ("human_ref_B", "human_ref_A")
    return {**row, "_chosen": row.get(win), "_rejected": row.get(lose)}


def _sharegpt(row):
    """USER/ASSISTANT become Human/Assistant; empty strings count as missing."""
    prompt, label = row.get("prompt"), row.get("label")
    prompt = prompt.replace("USER", "Human").replace("ASSISTANT", "Assistant") if prompt else None
    return {**row, "_prompt": prompt, "_label": label or None}


def _after_last_assistant(row):
    """yitingxie: chosen/rejected hold the whole reply turn; keep what follows the last 'Assistant:'."""
    tail = {f"_{k}": row[k].split("Assistant:")[-1] if row.get(k) is not None else None
            for k in ("chosen", "rejected")}
    return {**row, **tail}


TRANSFORMS = {"webgpt": _webgpt, "shp": _shp, "sharegpt": _sharegpt, "after_last_assistant": _after_last_assistant}
TRANSFORM_INPUTS = {"sharegpt": ("prompt", "label"), "after_last_assistant": ("chosen", "rejected")}  # row keys read
_HA_PAIRS = dict(chosen=" {chosen}", rejected=" {rejected}")

REGISTRY: dict[str, DatasetSpec] = {s.name: s for s in [
    DatasetSpec("Dahoas/rm-static", "{prompt}", "{chosen}", "{rejected}"),
    DatasetSpec("Dahoas/full-hh-rlhf", "{prompt}", "{chosen}", "{rejected}"),
    DatasetSpec("Dahoas/synthetic-instruct-gptj-pairwise", HA.format("{prompt}"), **_HA_PAIRS, eval_split=None),
    DatasetSpec("yitingxie/rlhf-reward-datasets", "{prompt}Assistant:", "{_chosen}", "{_rejected}",
                prompt_and_chosen="{prompt}{chosen}", prompt_and_rejected="{prompt}{rejected}",
                transform="after_last_assistant", required=("chosen",)),
    DatasetSpec("openai/webgpt_comparisons", HA.format("{question.full_text}"), " {_chosen}", " {_rejected}",
                eval_split=None, transform="webgpt", required=("answer_0", "answer_1", "score_0", "score_1")),
    DatasetSpec("stanfordnlp/SHP", HA.format("{history}"), " {_chosen}", " {_rejected}", eval_split="validation",
                transform="shp", required=("human_ref_A", "human_ref_B", "labels")),
    DatasetSpec("pvduy/sharegpt_alpaca_oa_vicuna_format", "{_prompt}", " {_label}", transform="sharegpt",
                required=("prompt", "label")),
    DatasetSpec("wangrui6/Zhihu-KOL", HA.format("{INSTRUCTION}"), " {RESPONSE}", eval_split=None, language="zh"),
    DatasetSpec("Cohere/miracl-zh-queries-22-12", HA.format("{query}"), " {positive_passages.0.text}",
                " {negative_passages.0.text}", eval_split="dev", language="zh"),
    DatasetSpec("Hello-SimpleAI/HC3-Chinese", HA.format("{question}"), " {human_answers.0}", hub_config="all",
                eval_split=None, language="zh"),
    DatasetSpec("mkqa-Chinese", HA.format("{queries.zh_cn}"), " {answers.zh_cn.0.text}", hub_id="mkqa",
                eval_split=None, clean_name="mkqa", language="zh"),
    DatasetSpec("mkqa-Japanese", HA.format("{queries.ja}"), " {answers.ja.0.text}", hub_id="mkqa",
                eval_split=None, clean_name="mkqa", language="ja"),
    DatasetSpec("Cohere/miracl-ja-queries-22-12", HA.format("{query}"), " {positive_passages.0.text}",
                " {negative_passages.0.text}", eval_split="dev", language="ja"),
    DatasetSpec("lmqg/qg_jaquad", HA.format("{question}"), " {sentence}", eval_split="validation", language="ja"),
    DatasetSpec("lmqg/qag_jaquad", HA.format("{questions.0}"), " {paragraph}", eval_split="validation",
                language="ja"),
    DatasetSpec("local/jsonfile", " {prompt}", " {chosen}", " {rejected}", eval_split="eval",
                clean_name="jsonfile"),
    # sftlib's own: what a bare local path means (rm-static's layout, fields used as they are).
    DatasetSpec("local/json", "{prompt}", "{chosen}", "{rejected}", eval_split="eval", clean_name="local_json"),
    # rows with a "messages" list, rendered with the chat template (sftlib.data.messages)
    DatasetSpec("messages", "{messages}", "{messages}", eval_split="eval", clean_name="messages", kind="messages"),
]}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add (or replace) a dataset in ``REGISTRY``, as a DeepSpeed-Chat user adds a class; returns it.
    Call it before the run starts: nothing in sftlib changes the registry while it runs."""
    REGISTRY[spec.name] = spec
    return spec


def load_spec_file(path) -> DatasetSpec:
    """A user's declarative mapping: a json object with ``name``, ``prompt``, ``chosen`` and
    optionally ``rejected``, ``train_split``, ``eval_split``, ``hub_id``, ``language``... (the
    registry is left as it is: ``register_dataset`` adds a spec on purpose)."""
    return _spec_of(path, _read_mapping(path, strict=True))


def _read_mapping(path, strict: bool) -> dict | None:
    """The json object of a mapping file; None (``strict=False``) when the file is not one."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        if not strict:
            return None
        raise SFTError(f"{path}:{e.lineno}: malformed json in the dataset mapping ({e.msg})") from None
    except UnicodeDecodeError:
        if not strict:
            return None
        raise
    if not strict and not (isinstance(obj, dict) and "prompt" in obj and "name" in obj):
        return None
    return obj


def _spec_of(path, obj: dict) -> DatasetSpec:
    fields = {f.name for f in dataclasses.fields(DatasetSpec)}
    unknown = sorted(set(obj) - fields - {"source", "description"})
    if unknown:
        raise SFTError(f"{path}: unknown keys {unknown} in the dataset mapping (known: {sorted(fields)})")
    for key in ("name", "prompt", "chosen"):
        if key not in obj:
            raise SFTError(f"{path}: the dataset mapping needs a {key!r} key")
    return DatasetSpec(**{k: tuple(v) if k == "required" else v for k, v in obj.items() if k in fields})


def _mapping_file(name: str) -> dict | None:
    """The mapping in ``name`` when it is a small json file holding one, else None."""
    if not (name.endswith(".json") and os.path.isfile(name)) or os.path.getsize(name) > 100_000:
        return None
    return _read_mapping(name, strict=False)


@dataclasses.dataclass(frozen=True)
class ResolvedPath:
    """What one ``--data_path`` entry names: the spec that reads its rows and where the rows are."""

    entry: str                 # as the user typed it
    spec: DatasetSpec
    source: str | None         # a local file or folder; None: ``datasets.load_dataset(spec.load_id)``
    note: str | None = None    # what rank 0 says about it once (a bare path that names a hub set)


def _schema_note(path: str) -> str | None:
    """DeepSpeed-Chat picks a set's reader by substring, so a local path naming a hub set was read with
    that set's schema; sftlib reads a bare path as plain rows, and this note says so and how to ask."""
    hub = next((n for n in REGISTRY if "/" in n and not n.startswith("local/") and n in path), None)
    if hub is None:
        return None
    return (f"note: --data_path {path} names {hub} but is read as plain rows (fields as they are); "
            f"for {hub}'s schema pass {hub}={path}")


def resolve_data_path(entry: str, registry: dict | None = None) -> ResolvedPath:
    """``--data_path`` entry -> its ``ResolvedPath`` (see ``sftlib.data``'s docstring); reads nothing but a
    mapping file, changes nothing. ``registry`` defaults to ``REGISTRY``."""
    from sftlib.model import local_path

    registry = REGISTRY if registry is None else registry
    entry = str(entry)
    name, source = entry.split("=", 1) if "=" in entry else (entry, None)
    if source is not None and not source:
        raise SFTError(f"--data_path {entry}: nothing after '='; give a local file or folder")
    if name in registry:
        return ResolvedPath(entry, registry[name], source)
    mapping = _mapping_file(name)
    if mapping is not None:
        local = mapping.get("source")
        if source is None and local:  # "source": rows next to the mapping file
            source = os.path.join(os.path.dirname(os.path.abspath(name)), os.path.expanduser(local))
        return ResolvedPath(entry, _spec_of(name, mapping), source)
    if source is None and local_path(name, "--data_path") is not None:
        spec = registry["messages" if looks_like_messages(name) else "local/json"]
        return ResolvedPath(entry, spec, name, _schema_note(name))
    known = ", ".join(sorted(registry))
    raise SFTError(f"--data_path {entry}: unknown dataset {name!r}; known: {known}; or give a local "
                   "folder/file, or NAME=/local/path")
