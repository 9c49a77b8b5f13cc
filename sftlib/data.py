"""DeepSpeed-Chat's dataset abstraction (``dschat/utils/data/``): raw sets, splits, prompt datasets.

Three layers, as in the original:

1. ``PromptRawDataset``: one dataset's train/eval rows and how to read ``prompt``, ``chosen`` and
   ``rejected`` from a row. Every set DeepSpeed-Chat knows is in ``REGISTRY`` as a small
   declarative ``DatasetSpec`` (field templates, splits); users add their own the same way, from
   a json file (see data_cards/README.md).
2. ``split_indices``: the seeded permutation cut by ``--data_split``; phase p uses part p-1, and
   the index files carry the original names.
3. ``create_prompt_dataset``: tokenized phase-1/2/3 datasets. Compat mode gives exactly the
   tensors of the original one-at-a-time recipe, but tokenizes in batches, stores unpadded int32
   ids as Arrow, and builds the cache once (global rank 0) while other ranks poll a marker file.

Naming a dataset on the command line (``--data_path``, ``--sft_only_data_path``)::

    Dahoas/rm-static                     # registered name: datasets.load_dataset(hub id)
    Dahoas/rm-static=/data/rm-static     # the same set from a local file or folder, offline
    path/to/folder                       # train.json + eval.json, fields used as they are
    local/jsonfile=path/to/rows.jsonl    # DeepSpeed-Chat's local/jsonfile, any json/jsonl path
    my_set.json=path/to/rows             # a user mapping (json) applied to local rows

Explained in notebooks/01_dataset_abstraction.ipynb.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from sftlib.utils import SFTError

DATA_FORMAT_VERSION = 1  # bump when anything changes what a cached dataset holds
SPLIT_FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".arrow")
HA = " Human: {} Assistant:"  # DeepSpeed-Chat's wrapping of a bare question


# --------------------------------------------------------------------------------------------
# Declarative dataset specs
# --------------------------------------------------------------------------------------------

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

    @property
    def dataset_name_clean(self) -> str:
        return self.clean_name or self.name.replace("/", "_").replace("-", "_")

    @property
    def load_id(self) -> str:
        return self.hub_id or self.name

    def required_keys(self, with_rejected: bool = False) -> list[str]:
        """Top-level row keys the prompt/chosen (and rejected) templates read."""
        temps = [self.prompt, self.chosen] + ([self.rejected] if with_rejected else [])
        keys = [p.split(".")[0] for t in temps if t for p in _PLACEHOLDER.findall(t)]
        keys += list(self.required)
        return list(dict.fromkeys(k for k in keys if not k.startswith("_")))


_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


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
def _parse_template(template: str) -> tuple:
    """``" Human: {q} Assistant:"`` -> ((" Human: ", "q"), (" Assistant:", None))."""
    parts, last = [], 0
    for m in _PLACEHOLDER.finditer(template):
        parts.append((template[last:m.start()], m.group(1)))
        last = m.end()
    parts.append((template[last:], None))
    return tuple(parts)


def render(template: str | None, row) -> str | None:
    """Fill a template from a row; None when the template or any value is None."""
    if template is None:
        return None
    out = []
    for literal, path in _parse_template(template):
        out.append(literal)
        if path is not None:
            value = row.get(path) if "." not in path and isinstance(row, dict) else get_field(row, path)
            if value is None:
                return None
            out.append(value if isinstance(value, str) else str(value))
    return "".join(out)


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
]}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add (or replace) a dataset in the registry; returns it."""
    if spec.transform is not None and spec.transform not in TRANSFORMS:
        raise SFTError(f"dataset {spec.name!r}: unknown transform {spec.transform!r} (known: {', '.join(TRANSFORMS)})")
    REGISTRY[spec.name] = spec
    return spec


def load_spec_file(path) -> DatasetSpec:
    """A user's declarative mapping: a json object with ``name``, ``prompt``, ``chosen`` and
    optionally ``rejected``, ``train_split``, ``eval_split``, ``hub_id``, ``language``..."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SFTError(f"{path}:{e.lineno}: malformed json in the dataset mapping ({e.msg})") from None
    fields = {f.name for f in dataclasses.fields(DatasetSpec)}
    unknown = sorted(set(obj) - fields - {"source", "description"})
    if unknown:
        raise SFTError(f"{path}: unknown keys {unknown} in the dataset mapping (known: {sorted(fields)})")
    for key in ("name", "prompt", "chosen"):
        if key not in obj:
            raise SFTError(f"{path}: the dataset mapping needs a {key!r} key")
    spec = {k: tuple(v) if k == "required" else v for k, v in obj.items() if k in fields}
    return register_dataset(DatasetSpec(**spec))


def _is_spec_file(path: str) -> bool:
    if not (path.endswith(".json") and os.path.isfile(path)) or os.path.getsize(path) > 100_000:
        return False
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(obj, dict) and "prompt" in obj and "name" in obj


def resolve_data_path(entry: str) -> tuple[DatasetSpec, str | None]:
    """``--data_path`` entry -> (spec, local source or None for the hub). See the module docstring."""
    entry = str(entry)
    name, source = entry.split("=", 1) if "=" in entry else (entry, None)
    if source is not None and not source:
        raise SFTError(f"--data_path {entry}: nothing after '='; give a local file or folder")
    if name in REGISTRY:
        return REGISTRY[name], source
    if _is_spec_file(name):
        spec = load_spec_file(name)
        local = json.loads(Path(name).read_text(encoding="utf-8")).get("source")
        if source is None and local:  # "source": rows next to the mapping file
            source = os.path.join(os.path.dirname(os.path.abspath(name)), os.path.expanduser(local))
        return spec, source
    if source is None and os.path.exists(name):
        return REGISTRY["local/json"], name
    if source is None and (name.startswith((".", "/", "~")) or name.strip("/").count("/") > 1):
        raise SFTError(f"--data_path {name}: no such file or folder")
    known = ", ".join(sorted(REGISTRY))
    raise SFTError(f"--data_path {entry}: unknown dataset {name!r}; known: {known}; or give a local "
                   "folder/file, or NAME=/local/path")


# --------------------------------------------------------------------------------------------
# Loading rows (hub or local) through `datasets`
# --------------------------------------------------------------------------------------------

def read_json_rows(path: str | os.PathLike, required=("prompt", "chosen")) -> list[dict]:
    """Rows of a json-lines file or a json list; errors name the file and line to fix."""
    path = Path(path)
    if not path.is_file():
        raise SFTError(f"data file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise SFTError(f"{path}:{e.lineno}: malformed json ({e.msg})") from None
        numbered, where = list(enumerate(rows, start=1)), "row"
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
        if not isinstance(row, dict):
            raise SFTError(f"{path}:{n}: each {where} must be a json object")
        missing = [k for k in required if k not in row]
        if missing:
            raise SFTError(f"{path}:{n}: {where} is missing {', '.join(repr(m) for m in missing)}")
    if not numbered:
        raise SFTError(f"{path}: the dataset is empty")
    return [row for _, row in numbered]


def _fast_json(path: Path, required):
    """json lines parsed by Arrow's C++ reader; None whenever anything looks off (then the slow
    reader runs and reports the exact line)."""
    import datasets
    import pyarrow as pa
    import pyarrow.json as pj

    with open(path, "rb") as f:
        if f.read(64).lstrip()[:1] in (b"[", b""):
            return None
    try:
        table = pj.read_json(str(path), read_options=pj.ReadOptions(block_size=1 << 24))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError):
        return None
    if table.num_rows == 0 or any(k not in table.column_names or table.column(k).null_count for k in required):
        return None
    return datasets.Dataset(table)


def _load_file(path: Path, spec: DatasetSpec):
    """One local file as a ``datasets.Dataset``; json/jsonl are checked row by row first."""
    import datasets

    required = spec.required_keys()
    if path.suffix in (".json", ".jsonl"):
        fast = _fast_json(path, required)
        if fast is not None:
            return fast
        rows = read_json_rows(path, required)  # slow, but names the file and line of any problem
        try:
            return datasets.Dataset.from_list(rows)
        except Exception as err:  # arrow type clashes between rows
            raise SFTError(f"{path}: rows disagree on a field's type ({str(err).splitlines()[0][:120]})") from None
    kind = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}.get(path.suffix)
    if kind is None:
        raise SFTError(f"{path}: unsupported file type; use json, jsonl, parquet, csv or arrow")
    ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    _check_columns(ds, required, str(path))
    return ds


def select_rows(ds, indices):
    """``ds.select(indices)`` with a cheap fingerprint (``datasets`` would dill-hash the whole list)."""
    indices = list(indices)
    tag = hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes() + ds._fingerprint.encode()).hexdigest()
    return ds.select(indices, new_fingerprint=tag[:32])


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


def load_local(spec: DatasetSpec, source: str) -> dict:
    """{split: datasets.Dataset} from a file, a folder of split files, or a ``save_to_disk`` folder."""
    import datasets

    path = Path(source).expanduser()
    if not path.exists():
        raise SFTError(f"data path {path} does not exist")
    if path.is_file():
        return {spec.train_split: _load_file(path, spec)}
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {spec.train_split: loaded}
        for split, ds in splits.items():
            _check_columns(ds, spec.required_keys(), f"{path} ({split})")
        return splits
    out = {}
    for split in [spec.train_split] + ([spec.eval_split] if spec.eval_split else []):
        file = _split_file(path, split)
        if file is None:
            raise SFTError(f"data folder {path} has no {split}.json or {split}.jsonl "
                           f"(also tried {', '.join(SPLIT_FILE_SUFFIXES[2:])}, data/{split}-*.parquet)")
        out[split] = _load_file(file, spec)
    return out


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


def fingerprint_source(spec: DatasetSpec, source: str | None, splits: dict | None = None) -> str:
    """What the cache key knows about the rows: every local file's bytes, or the hub fingerprint."""
    h = hashlib.sha256(repr(dataclasses.astuple(spec)).encode())
    if source is None:
        for split in sorted(splits or {}):
            h.update(f"{split}:{splits[split]._fingerprint}".encode())
        return h.hexdigest()
    path = Path(source).expanduser()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Raw datasets
# --------------------------------------------------------------------------------------------

class PromptRawDataset:
    """One dataset's rows and DeepSpeed-Chat's method set, driven by a ``DatasetSpec``.

    ``get_train_data``/``get_eval_data`` return ``datasets.Dataset`` objects; sets without an eval
    split are cut 9:1 by the same index recipe as ``--data_split`` (files ``*_train_eval_9,1_*``).
    """

    def __init__(self, output_path: str, seed: int, local_rank: int, dataset_name: str,
                 source: str | None = None, spec: DatasetSpec | None = None):
        self.output_path, self.seed, self.local_rank = output_path, seed, local_rank
        self.spec = spec or resolve_data_path(dataset_name)[0]
        self.dataset_name, self.dataset_name_clean = self.spec.name, self.spec.dataset_name_clean
        self.source = source
        self.raw_datasets = load_local(self.spec, source) if source else load_hub(self.spec)
        self._transform = TRANSFORMS.get(self.spec.transform) if self.spec.transform else None
        if self.spec.train_split not in self.raw_datasets:
            raise SFTError(f"dataset {self.spec.name}: no {self.spec.train_split!r} split in "
                           f"{source or self.spec.load_id} (found: {', '.join(self.raw_datasets)})")

    @classmethod
    def for_spec(cls, spec: DatasetSpec) -> "PromptRawDataset":
        """A row reader with no rows loaded (cheap to send to tokenizing worker processes)."""
        self = cls.__new__(cls)
        self.spec, self.raw_datasets, self.source = spec, None, None
        self.dataset_name, self.dataset_name_clean = spec.name, spec.dataset_name_clean
        self._transform = TRANSFORMS.get(spec.transform) if spec.transform else None
        return self

    def _own_eval(self) -> bool:
        return self.spec.eval_split is not None and self.spec.eval_split in self.raw_datasets

    def _train_eval_part(self, part: int):
        train = self.raw_datasets[self.spec.train_split]
        index = get_raw_dataset_split_index(self.local_rank, self.output_path, self.dataset_name_clean, self.seed,
                                            "train_eval", "9,1", part, len(train))
        return select_rows(train, index)

    def get_train_data(self):
        if self._own_eval():
            return self.raw_datasets[self.spec.train_split]
        return self._train_eval_part(0)

    def get_eval_data(self):
        if self._own_eval():
            return self.raw_datasets[self.spec.eval_split]
        return self._train_eval_part(1)

    def prepare(self, sample) -> dict:
        """The row with the spec's transform applied (derived fields start with ``_``)."""
        return self._transform(sample) if self._transform else sample

    def get_prompt(self, sample):
        return render(self.spec.prompt, self.prepare(sample))

    def get_chosen(self, sample):
        return render(self.spec.chosen, self.prepare(sample))

    def get_rejected(self, sample):
        return render(self.spec.rejected, self.prepare(sample))

    def _joined(self, sample, which: str):
        row = self.prepare(sample)
        template = getattr(self.spec, f"prompt_and_{which}")
        if template is not None:
            return render(template, row)
        prompt, answer = render(self.spec.prompt, row), render(getattr(self.spec, which), row)
        return None if prompt is None or answer is None else prompt + answer

    def prompt_and_chosen_pair(self, sample) -> tuple[str | None, str | None]:
        """(get_prompt, get_prompt_and_chosen) with the row prepared once (the batched path's hot loop)."""
        row = self.prepare(sample)
        prompt = render(self.spec.prompt, row)
        if self.spec.prompt_and_chosen is not None:
            return prompt, render(self.spec.prompt_and_chosen, row)
        chosen = render(self.spec.chosen, row) if prompt is not None else None
        return prompt, (prompt + chosen if chosen is not None else None)

    def columns_needed(self, train_phase: int) -> list[str]:
        """Row keys the templates and transform of ``train_phase`` read."""
        temps = [self.spec.prompt] + ([] if train_phase == 3 else [self.spec.chosen, self.spec.prompt_and_chosen])
        temps += [self.spec.rejected, self.spec.prompt_and_rejected] if train_phase == 2 else []
        keys = [p.split(".")[0] for t in temps if t for p in _PLACEHOLDER.findall(t)] + list(self.spec.required)
        if self.spec.transform == "sharegpt":
            keys += ["prompt", "label"]
        elif self.spec.transform == "after_last_assistant":
            keys += ["chosen", "rejected"]
        return list(dict.fromkeys(k for k in keys if not k.startswith("_")))

    def get_prompt_and_chosen(self, sample):
        return self._joined(sample, "chosen")

    def get_prompt_and_rejected(self, sample):
        return self._joined(sample, "rejected")


def get_raw_dataset(dataset_name: str, output_path: str, seed: int, local_rank: int) -> PromptRawDataset:
    """The raw dataset for a ``--data_path`` entry (a registered name, ``NAME=path`` or a local path)."""
    spec, source = resolve_data_path(dataset_name)
    return PromptRawDataset(output_path, seed, local_rank, spec.name, source=source, spec=spec)


# --------------------------------------------------------------------------------------------
# Splits (phases 1/2/3 share one seeded permutation)
# --------------------------------------------------------------------------------------------

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


def split_indices(seed: int, data_split: str, data_size: int) -> list[np.ndarray]:
    """DeepSpeed-Chat's recipe: shuffle, cut by rounded cumulative proportions; the first part
    absorbs the rounding."""
    splits = parse_data_split(data_split, parts=len(str(data_split).split(",")))
    bounds = [0]
    for s in splits:
        bounds.append(bounds[-1] + int(round(s * float(data_size))))
    diff = bounds[-1] - data_size
    bounds = [bounds[0]] + [b - diff for b in bounds[1:]]
    order = get_shuffle_idx(seed, data_size)
    return [order[bounds[i]:bounds[i + 1]] for i in range(len(splits))]


def index_file_name(output_path, dataset_name_clean, seed, split_name, data_split, split_index) -> str:
    """The original's index file: ``{clean}_seed{seed}_{train|eval|train_eval}_{split}_{i}.npy``."""
    return os.path.join(output_path, f"{dataset_name_clean}_seed{seed}_{split_name}_{data_split}_{split_index}.npy")


def get_raw_dataset_split_index(local_rank, output_path, dataset_name_clean, seed, split_name, data_split,
                                split_index, data_size, rebuild=False) -> list[int]:
    """Indices of part ``split_index``; all parts are (re)written as ``.npy`` files by global rank 0.

    Unlike the original, the indices are always recomputed (cheap), so an edited dataset can never
    be paired with stale index files.
    """
    parts = split_indices(seed, data_split, data_size)
    if global_rank() == 0 and output_path:
        os.makedirs(output_path, exist_ok=True)
        for i, part in enumerate(parts):
            final = index_file_name(output_path, dataset_name_clean, seed, split_name, data_split, i)
            tmp = f"{final}.{os.getpid()}.tmp.npy"
            np.save(tmp, part)
            os.replace(tmp, final)
    return parts[split_index].tolist()


# --------------------------------------------------------------------------------------------
# Tokenization: the original one-at-a-time recipe, and the batched one
# --------------------------------------------------------------------------------------------

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
    parts = _parse_template(template)
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
    """``datasets.map(batched=True)`` body: rows -> unpadded token ids (+ prompt token counts)."""
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


def tokenize_split(rows, raw: PromptRawDataset, train_phase: int, tokenizer, end_of_conversation_token: str,
                   max_seq_len: int, num_proc: int | None = None):
    """Tokenize a ``datasets.Dataset`` of raw rows for ``train_phase`` in batches (several processes
    for big sets). Returns an Arrow dataset of unpadded int32 ids."""
    import datasets

    if num_proc is None:
        num_proc = min(4, os.cpu_count() or 1) if len(rows) >= 20_000 else None
    ids = datasets.Sequence(datasets.Value("int32"))
    num = datasets.Value("int32")
    features = datasets.Features({1: {"input_ids": ids, "prompt_tokens": num, "full_length": num},
                                  2: {"chosen_input_ids": ids, "rejected_input_ids": ids, "full_length": num},
                                  3: {"input_ids": ids, "full_length": num}}[train_phase])
    needed = [c for c in raw.columns_needed(train_phase) if c in rows.column_names]
    rows = rows.select_columns(needed, new_fingerprint=hashlib.sha256(
        f"{rows._fingerprint}{needed}".encode()).hexdigest()[:32])
    tag = hashlib.sha256(f"{rows._fingerprint}-{train_phase}-{max_seq_len}-{end_of_conversation_token}".encode())
    out = rows.map(_phase_batch, batched=True, batch_size=1000, num_proc=num_proc, features=features,
                   remove_columns=rows.column_names, keep_in_memory=True, load_from_cache_file=False,
                   new_fingerprint=tag.hexdigest()[:32],  # skip hashing the tokenizer with dill
                   fn_kwargs=dict(raw=PromptRawDataset.for_spec(raw.spec), train_phase=train_phase,
                                  tokenizer=tokenizer, eot=end_of_conversation_token, max_seq_len=max_seq_len))
    if train_phase == 3:
        before = len(out)
        out = out.filter(lambda n: n <= max_seq_len, input_columns="full_length", keep_in_memory=True)
        print(f"Creating dataset {raw.dataset_name_clean} for train_phase=3 size={len(out)} "
              f"filtered={before - len(out)}", flush=True)
    return out


# --------------------------------------------------------------------------------------------
# Tokenized datasets
# --------------------------------------------------------------------------------------------

def _pad(ids: list[int], length: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.full((length,), pad_id, dtype=torch.long)
    mask = torch.zeros(length, dtype=torch.long)
    out[:len(ids)] = torch.tensor(ids, dtype=torch.long)
    mask[:len(ids)] = 1
    return out, mask


class PromptDataset(Dataset):
    """Tokenized samples of one phase, stored unpadded (Arrow), returned like the original's.

    Phase 1 yields ``input_ids``, ``attention_mask`` and ``labels`` (-100 on padding, and on the
    prompt when ``mask_prompt``); padded to ``max_seq_len`` unless ``pad_to_max_len=False`` (then a
    collator from ``sftlib.collate`` pads each batch). Phase 2 yields (chosen ids, chosen mask,
    rejected ids, rejected mask), each of shape (1, max_seq_len); phase 3 yields (reversed prompt
    ids, reversed mask, pad id), as the original stores them for left padding.
    """

    def __init__(self, table, pad_token_id: int, train_phase: int, max_seq_len: int,
                 mask_prompt: bool = False, pad_to_max_len: bool = True):
        self.table, self.pad_token_id, self.train_phase = table, pad_token_id, train_phase
        self.max_seq_len, self.mask_prompt, self.pad_to_max_len = max_seq_len, mask_prompt, pad_to_max_len

    def __len__(self):
        return len(self.table)

    def __getitem__(self, idx):
        row = self.table[int(idx)]
        if self.train_phase == 1:
            return self._phase1(row)
        if self.train_phase == 2:
            c, cm = _pad(row["chosen_input_ids"], self.max_seq_len, self.pad_token_id)
            r, rm = _pad(row["rejected_input_ids"], self.max_seq_len, self.pad_token_id)
            return c[None], cm[None], r[None], rm[None]
        ids = torch.tensor(row["input_ids"], dtype=torch.long)
        return ids.flip(0), torch.ones_like(ids), self.pad_token_id

    def _phase1(self, row):
        n = len(row["input_ids"])
        length = self.max_seq_len if self.pad_to_max_len else n
        ids, mask = _pad(row["input_ids"], length, self.pad_token_id)
        labels = torch.where(mask.bool(), ids, torch.tensor(-100))
        if self.mask_prompt:
            labels[:row["prompt_tokens"]] = -100
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# --------------------------------------------------------------------------------------------
# The cache: Arrow, keyed on everything that changes the tensors, built once by global rank 0
# --------------------------------------------------------------------------------------------

def global_rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


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
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _manifest(folder: Path) -> dict:
    out = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "meta.json"):
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
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


def _save_cache(folder: Path, train, evals, info: dict) -> None:
    """Write to a temporary folder, then rename: a reader never sees a half-written cache."""
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


def _blend(tables, seed: int, weights=None):
    """Concatenate then shuffle (compat: each set contributes all its rows). With ``weights``,
    set i contributes ``round(w_i / sum(w) * total)`` rows (repeating a small set if needed)."""
    import datasets

    tables = [t for t in tables if len(t)]
    if not tables:
        return None
    if weights is not None:
        total, wsum = sum(len(t) for t in tables), float(sum(weights))
        picked = []
        for i, (t, w) in enumerate(zip(tables, weights)):
            want = int(round(w / wsum * total))
            order = np.random.RandomState(seed + i).permutation(len(t))
            picked.append(select_rows(t, np.resize(order, want).tolist()))
        tables = picked
    if len(tables) == 1 and weights is None:
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


def build_prompt_datasets(data_path, data_split, output_path, train_phase, seed, tokenizer, max_seq_len,
                          end_of_conversation_token, sft_only_data_path=(), blend_weights=None, num_proc=None,
                          local_rank=0):
    """Tokenize and blend every set (no cache). Returns Arrow (train, eval) and a stats dict."""
    trains, evals, stats = [], [], {}
    entries = [(p, data_split) for p in data_path] + [(p, "10,0,0") for p in (sft_only_data_path or [])]
    for i, (entry, split) in enumerate(entries):
        raw = get_raw_dataset(entry, output_path, seed, local_rank)
        if raw.spec.rejected is None and train_phase == 2:
            print(f"warning: {raw.dataset_name} has no rejected answers; phase 2 gets no rows from it", flush=True)
        for name, rows, bucket in (("train", raw.get_train_data(), trains), ("eval", raw.get_eval_data(), evals)):
            idx = get_raw_dataset_split_index(local_rank, output_path, raw.dataset_name_clean, seed, name, split,
                                              train_phase - 1, len(rows))
            table = tokenize_split(select_rows(rows, idx), raw, train_phase, tokenizer, end_of_conversation_token,
                                   max_seq_len, num_proc)
            stats[f"{entry}:{name}"] = _report_truncation(table, max_seq_len, f"{entry} ({name})", train_phase)
            bucket.append((entry in (sft_only_data_path or []), table))
    main_w = blend_weights[:len(data_path)] if blend_weights else None
    train = _blend([t for sft, t in trains if not sft], seed, main_w)
    evals_main = _blend([t for sft, t in evals if not sft], seed)
    sft_train = [t for sft, t in trains if sft]
    sft_eval = [t for sft, t in evals if sft]
    if train_phase == 1 and sft_train and any(len(t) for t in sft_train):
        train = _blend(([train] if train is not None else []) + sft_train, seed)
    if train_phase == 1 and sft_eval and any(len(t) for t in sft_eval):
        evals_main = _blend(([evals_main] if evals_main is not None else []) + sft_eval, seed)
    empty = select_rows(trains[0][1], [])
    return (train if train is not None else empty), (evals_main if evals_main is not None else empty), stats


def create_prompt_dataset(local_rank, data_path, data_split, output_path, train_phase, seed, tokenizer,
                          max_seq_len, end_of_conversation_token="<|endoftext|>", sft_only_data_path=(),
                          reload=False, blend_weights=None, mask_prompt=False, pad_to_max_len=True,
                          num_proc=None):
    """Train and eval ``PromptDataset`` for ``train_phase``: DeepSpeed-Chat's signature and result.

    The tokenized sets are cached under ``output_path/prompt_dataset_<key>/`` (Arrow). The key
    covers every data file's bytes (or the hub fingerprint), the tokenizer (files, added tokens,
    special tokens), ``end_of_conversation_token``, ``max_seq_len``, split, phase, seed, blend
    weights and ``DATA_FORMAT_VERSION``. Global rank 0 builds (under a file lock); other ranks poll
    for the finished cache. A damaged cache is rebuilt with a warning. ``mask_prompt`` and
    ``pad_to_max_len`` only change how samples are read, not the cache.
    """
    from filelock import FileLock

    if train_phase not in (1, 2, 3):
        raise SFTError(f"train_phase must be 1, 2 or 3 (got {train_phase})")
    parse_data_split(data_split)
    data_path = [data_path] if isinstance(data_path, str) else list(data_path)
    sft_only = list(sft_only_data_path or [])
    if blend_weights is not None:
        if len(blend_weights) != len(data_path) or any(w < 0 for w in blend_weights) or sum(blend_weights) <= 0:
            raise SFTError(f"--data_weights {blend_weights}: give one non-negative weight per --data_path "
                           f"({len(data_path)}), not all zero")
    resolved = [resolve_data_path(p) for p in data_path + sft_only]  # fail early on unknown names
    sources = [fingerprint_source(spec, src) if src else f"hub:{spec.load_id}:{spec.hub_config}"
               for spec, src in resolved]
    key_parts = {"format_version": DATA_FORMAT_VERSION, "data_path": data_path, "sources": sources,
                 "sft_only": sft_only, "split": data_split, "phase": train_phase, "seed": seed,
                 "max_seq_len": max_seq_len, "eot": end_of_conversation_token,
                 "tokenizer": tokenizer_fingerprint(tokenizer), "blend_weights": blend_weights}
    if any(src is None for _, src in resolved):  # hub sets: include their cached fingerprints
        key_parts["hub"] = [fingerprint_source(spec, None, load_hub(spec)) for spec, src in resolved if src is None]
    os.makedirs(output_path, exist_ok=True)
    folder = Path(output_path) / f"prompt_dataset_{cache_key(key_parts)}"
    if global_rank() == 0:
        with FileLock(f"{folder}.lock"):
            _build_if_needed(folder, reload, key_parts, data_path, data_split, output_path, train_phase, seed,
                             tokenizer, max_seq_len, end_of_conversation_token, sft_only, blend_weights, num_proc,
                             local_rank)
    else:
        wait_for_cache(folder)
    return load_prompt_datasets(folder, tokenizer.pad_token_id, train_phase, max_seq_len, mask_prompt,
                                pad_to_max_len)


def _build_if_needed(folder, reload, key_parts, *build_args):
    import datasets

    problem = cache_problem(folder)
    if problem is None and not reload:
        return
    if problem != "missing" and not reload:
        warnings.warn(f"dataset cache {folder} is damaged ({problem}); rebuilding it", stacklevel=3)
    failed = Path(f"{folder}.failed")
    failed.unlink(missing_ok=True)
    try:
        data_path, data_split, output_path, phase, seed, tok, max_len, eot, sft_only, weights, nproc, lr = build_args
        t0 = time.time()
        quiet = datasets.utils.are_progress_bars_disabled()
        datasets.disable_progress_bars()
        try:
            train, evals, stats = build_prompt_datasets(data_path, data_split, output_path, phase, seed, tok, max_len,
                                                        eot, sft_only, weights, nproc, lr)
            _save_cache(folder, train, evals, {"key": key_parts, "train_rows": len(train), "eval_rows": len(evals),
                                               "stats": stats, "build_seconds": round(time.time() - t0, 3)})
        finally:
            if not quiet:
                datasets.utils.enable_progress_bars()
        print(f"built dataset cache {folder.name[:28]}... ({len(train)} train / {len(evals)} eval rows, "
              f"{time.time() - t0:.1f} s)", flush=True)
    except BaseException as err:
        failed.write_text(f"rank 0 could not build the dataset cache: {err}")
        raise


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


def make_toy_rows(base_rows: list[dict], n: int) -> list[dict]:
    """``n`` distinct rows cycling through ``base_rows`` (each prompt gets a ``#k`` tag): for
    benchmarks and tests that need more rows than the toy set has."""
    out = []
    for k in range(n):
        row = dict(base_rows[k % len(base_rows)])
        row["prompt"] = row["prompt"].replace("Human: ", f"Human: #{k} ", 1)
        out.append(row)
    return out
