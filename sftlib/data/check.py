"""Every ``--data_path`` / ``--sft_only_data_path`` entry checked before any work, and handed on.

``check_data_paths`` resolves each entry once (``resolve_data_path``), and the process that builds its
node's cache (local rank 0) reads each local file once: its bytes give both the rows (checked row by
row, a bad one named by file and line) and the fingerprint the cache key holds. The result, a
``CheckedData``, is what ``create_prompt_dataset`` takes (``checked_data=``), so the build neither
resolves nor reads again: on a cache hit the rows are never parsed a second time, on a miss they are
tokenized from what the check read. The node's other ranks read no rows: they hash the files' bytes
for the cache key and wait for the cache. Hub sets are loaded once, by the build.

The other data rules live here too, one function each: the phase split (``check_split_rows``), the
blend weights (``check_data_weights``) and which kinds of sets blend.
"""

from __future__ import annotations

import dataclasses
import math

from sftlib.data.raw import PromptRawDataset
from sftlib.data.registry import ResolvedPath, resolve_data_path
from sftlib.data.sources import fingerprint_source, load_hub, load_local
from sftlib.data.splits import parse_data_split, part_sizes
from sftlib.dist import global_rank
from sftlib.errors import SFTError

SFT_ONLY_SPLIT = "10,0,0"  # sft-only sets are not split: all their rows feed phase 1


@dataclasses.dataclass(frozen=True)
class CheckedSet:
    """One entry, resolved once; its rows and fingerprint once this process has them."""

    resolved: ResolvedPath
    split: str                        # its --data_split (SFT_ONLY_SPLIT for an sft-only set)
    sft_only: bool
    splits: dict | None = None        # {split name: datasets.Dataset}; None: not read by this process
    fingerprint: str | None = None    # what the cache key knows of the rows; None: not taken yet

    @property
    def entry(self) -> str:
        return self.resolved.entry

    @property
    def is_local(self) -> bool:
        return self.resolved.source is not None

    def read(self) -> CheckedSet:
        """This set with its rows (a local set's files read once, a hub set loaded once)."""
        if self.splits is not None:
            return self
        spec, source = self.resolved.spec, self.resolved.source
        if source is not None:
            splits, fingerprint = load_local(spec, source)
        else:
            splits = load_hub(spec)
            fingerprint = fingerprint_source(spec, None, splits)
        return dataclasses.replace(self, splits=splits, fingerprint=fingerprint)

    def fingerprinted(self) -> CheckedSet:
        """This set with its fingerprint: a local set's files hashed (not parsed), a hub set loaded."""
        if self.fingerprint is not None:
            return self
        if not self.is_local:
            return self.read()
        return dataclasses.replace(self, fingerprint=fingerprint_source(self.resolved.spec, self.resolved.source))

    def raw(self, output_path: str = "", seed: int = 0, local_rank: int = -1) -> PromptRawDataset:
        """DeepSpeed-Chat's raw dataset over the rows read (``output_path`` "" writes no index file)."""
        spec = self.resolved.spec
        return PromptRawDataset(output_path, seed, local_rank, spec.name, source=self.resolved.source, spec=spec,
                                splits=self.read().splits, fingerprint=self.fingerprint)


@dataclasses.dataclass(frozen=True)
class CheckedData:
    """What ``check_data_paths`` found: every entry of one request, in order (data_path, then sft-only)."""

    data_path: tuple[str, ...]
    sft_only_data_path: tuple[str, ...]
    data_split: str
    sets: tuple[CheckedSet, ...]

    @property
    def notes(self) -> list[str]:
        """What rank 0 says about the entries (a bare path that names a hub set is read as plain rows)."""
        return [s.resolved.note for s in self.sets if s.resolved.note]

    def read(self) -> CheckedData:
        return dataclasses.replace(self, sets=tuple(s.read() for s in self.sets))

    def fingerprinted(self) -> CheckedData:
        return dataclasses.replace(self, sets=tuple(s.fingerprinted() for s in self.sets))

    def is_for(self, data_path, sft_only_data_path, data_split) -> bool:
        return (self.data_path, self.sft_only_data_path, self.data_split) == (
            tuple(data_path), tuple(sft_only_data_path or ()), data_split)


def check_data_paths(data_path, sft_only_data_path=(), data_split: str = "2,4,4", train_phase: int = 1,
                     read: bool = True) -> CheckedData:
    """Resolve every entry (unknown names and missing paths fail here) and, with ``read`` (the node's
    local rank 0), read every local set's rows: bad bytes or rows fail with their file and line, and
    when every set is local, phase ``train_phase`` must get train and eval rows (``check_split_rows``).
    Writes nothing."""
    data_path = [data_path] if isinstance(data_path, str) else list(data_path)
    sft_only = list(sft_only_data_path or ())
    parse_data_split(data_split)
    entries = [(p, data_split, False) for p in data_path] + [(p, SFT_ONLY_SPLIT, True) for p in sft_only]
    sets = [CheckedSet(resolve_data_path(p), split, sft) for p, split, sft in entries]
    check_kinds(sets)
    if read:
        sets = [s.read() if s.is_local else s for s in sets]
        if all(s.is_local for s in sets):
            check_split_rows(sets, train_phase)
    return CheckedData(tuple(data_path), tuple(sft_only), data_split, tuple(sets))


def print_notes(checked_data: CheckedData) -> None:
    """Rank 0 prints the notes of a check (once per check: ``create_prompt_dataset`` given the check's
    result prints nothing again)."""
    if global_rank() == 0:
        for note in checked_data.notes:
            print(note, flush=True)


def check_kinds(sets) -> None:
    """Chats (``messages`` sets) and prompt/chosen sets do not blend."""
    if len({s.resolved.spec.kind for s in sets}) > 1:
        raise SFTError("--data_path: messages sets cannot be blended with prompt/chosen sets; give one kind")


def check_data_weights(data_weights, n_data_path: int) -> tuple[float, ...] | None:
    """``--data_weights``: None or empty (blend by size), else one finite, non-negative weight per
    ``--data_path`` entry, not all zero; returned as a tuple (or None)."""
    if not data_weights:
        return None
    for w in data_weights:
        if not math.isfinite(w) or w < 0:
            raise SFTError(f"--data_weights must be non-negative numbers (got {w})")
    if len(data_weights) != n_data_path:
        raise SFTError(f"--data_weights has {len(data_weights)} weights for {n_data_path} --data_path entries; "
                       "give one per entry")
    if sum(data_weights) <= 0:
        raise SFTError("--data_weights are all zero; give at least one set a positive weight")
    return tuple(float(w) for w in data_weights)


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


def used_sets(sets, train_phase: int) -> list:
    """The sets phase ``train_phase`` reads: sft-only sets feed phase 1 alone."""
    return [s for s in sets if not (s.sft_only and train_phase != 1)]


def check_split_rows(sets, train_phase: int) -> None:
    """Every split decided before any tokenizing. ``sets``: ``CheckedSet``s with their rows. Phase
    ``train_phase`` must get at least one train row and one eval row from the blend (an empty split is
    never cached); otherwise one line names the data path, the split and the row counts.

    An empty eval split is an error, not a run without evaluation: DeepSpeed-Chat evaluates before
    training and after every epoch (``step1_supervised_finetuning/main.py``; its ``evaluation`` fails on
    an unset ``step`` when there is no eval batch), and a first run's perplexity is how one sees that
    the model learned."""
    counted = [(s.entry, s.split, s.raw().split_rows()) for s in used_sets(sets, train_phase)]
    if not counted:
        return
    phase = [(part_sizes(split, n_train), part_sizes(split, n_eval)) for _, split, (n_train, n_eval, _) in counted]
    paths = " ".join(entry for entry, _, _ in counted)
    if sum(train[train_phase - 1] for train, _ in phase) == 0:
        raise SFTError(f"--data_path {paths}: phase {train_phase} gets no train rows ({_why(counted, phase, 0)}); "
                       f"give phase {train_phase} a larger share of --data_split (10,0,0 for SFT alone) or more rows")
    if sum(evals[train_phase - 1] for _, evals in phase) == 0:
        raise SFTError(f"--data_path {paths}: phase {train_phase} gets no eval rows ({_why(counted, phase, 1)}); "
                       "training evaluates before the first step and after each epoch, as DeepSpeed-Chat does: "
                       f"give {', or '.join(_eval_fixes(counted, train_phase))}")


def _why(counted, phase, which: int) -> str:
    """Each set's row counts, and what the split gave each phase (``which``: 0 train, 1 eval)."""
    said = []
    for (entry, split, (n_train, n_eval, cut)), shares in zip(counted, phase):
        n = (n_train, n_eval)[which]
        text = (f"{_rows(n_train + n_eval)} cut 9:1 into {n_train} train / {n_eval} eval" if cut
                else f"{n} {('train', 'eval')[which]} row{'' if n == 1 else 's'}")
        if n:  # the split, not the cut, left this phase none
            text += f", --data_split {split} gives phases 1/2/3 {'/'.join(map(str, shares[which]))}"
        said.append(text if len(counted) == 1 else f"{entry}: {text}")
    return "; ".join(said)


def _eval_fixes(counted, train_phase: int) -> list[str]:
    """What would give phase ``train_phase`` an eval row: more rows, a larger share, an eval file."""
    fixes = []
    for _, split, (n_train, n_eval, cut) in counted:
        least = _least(split, train_phase - 1, n_train + n_eval if cut else n_eval, cut)
        if least is not None:
            fixes.append(f"{least} rows or more" if cut else f"an eval split of {least} rows or more")
        if n_eval:  # the split, not the row count, left this phase no eval row
            fixes.append(f"a larger phase-{train_phase} share of --data_split (10,0,0 for SFT alone)")
    if any(cut for _, _, (_, _, cut) in counted):  # a single file: an eval file of its own helps too
        fixes.append("a folder with train.json and eval.json")
    return list(dict.fromkeys(fixes))
