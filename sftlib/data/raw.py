"""Raw datasets: one set's train/eval rows and DeepSpeed-Chat's seven reader methods
(``dschat/utils/data/raw_datasets.py``), driven by a ``DatasetSpec`` instead of a subclass per set."""

from __future__ import annotations

from sftlib.data.registry import TRANSFORM_INPUTS, TRANSFORMS, DatasetSpec, render, resolve_data_path, row_keys
from sftlib.data.sources import fingerprint_source, load_hub, load_local, select_rows
from sftlib.data.splits import get_raw_dataset_split_index, part_sizes
from sftlib.errors import SFTError


class PromptRawDataset:
    """One dataset's rows and DeepSpeed-Chat's method set, driven by a ``DatasetSpec``.

    ``get_train_data``/``get_eval_data`` return ``datasets.Dataset`` objects; sets without an eval
    split are cut 9:1 by the same index recipe as ``--data_split`` (files ``*_train_eval_9,1_*``,
    written by the process whose ``local_rank <= 0``).
    """

    def __init__(self, output_path: str, seed: int, local_rank: int, dataset_name: str,
                 source: str | None = None, spec: DatasetSpec | None = None, splits: dict | None = None,
                 fingerprint: str | None = None):
        """DeepSpeed-Chat's signature; ``spec``/``source`` skip resolving ``dataset_name`` again, and
        ``splits`` ({split: datasets.Dataset}, with their ``fingerprint``) are rows already read."""
        self.output_path, self.seed, self.local_rank = output_path, seed, local_rank
        if spec is None:
            resolved = resolve_data_path(dataset_name)
            spec, source = resolved.spec, resolved.source
        self.spec, self.source = spec, source
        self.dataset_name, self.dataset_name_clean = self.spec.name, self.spec.dataset_name_clean
        if splits is None:
            splits, fingerprint = load_local(spec, source) if source else _hub_rows(spec)
        self.raw_datasets, self.fingerprint = splits, fingerprint
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

    def split_rows(self) -> tuple[int, int, bool]:
        """(train rows, eval rows, whether eval is the 9:1 cut of train): the sizes ``get_train_data`` and
        ``get_eval_data`` will have, computed without shuffling or writing index files."""
        train = len(self.raw_datasets[self.spec.train_split])
        if self._own_eval():
            return train, len(self.raw_datasets[self.spec.eval_split]), False
        kept, cut = part_sizes("9,1", train)
        return kept, cut, True

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
        return row_keys(temps, list(self.spec.required) + list(TRANSFORM_INPUTS.get(self.spec.transform, ())))

    def get_prompt_and_chosen(self, sample):
        return self._joined(sample, "chosen")

    def get_prompt_and_rejected(self, sample):
        return self._joined(sample, "rejected")


def _hub_rows(spec: DatasetSpec) -> tuple[dict, str]:
    """A hub set's splits, loaded once, and their fingerprint."""
    splits = load_hub(spec)
    return splits, fingerprint_source(spec, None, splits)


def get_raw_dataset(dataset_name: str, output_path: str, seed: int, local_rank: int) -> PromptRawDataset:
    """The raw dataset for a ``--data_path`` entry (a registered name, ``NAME=path`` or a local path)."""
    resolved = resolve_data_path(dataset_name)
    return PromptRawDataset(output_path, seed, local_rank, resolved.spec.name, source=resolved.source,
                            spec=resolved.spec)
