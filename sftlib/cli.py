"""The one way every ``python -m sftlib...`` command ends on bad input: ``error: ...``, exit 2.

Under a launcher each rank may fail on its own (its node's data file, its node's disk). A step that
every rank runs goes through ``on_every_rank``: the ranks compare their outcomes, so an error every
rank hit is printed once (plainly), an error only some ranks hit is printed by the first of them
with its rank (``error: [rank 1] ...``), and every rank exits 2 instead of waiting for the others.
Who prints which line is decided here and nowhere else: ``SFTError`` carries only its message.
"""

from __future__ import annotations

import os
import sys

import torch.distributed as dist

from sftlib.dist import all_ranks, global_rank, launched
from sftlib.errors import ReportedElsewhere, SFTError

QUIET = "\0quiet"  # what a rank sends when another rank reports the failure


class Decided(SFTError):
    """An ``SFTError`` whose printed line the ranks have settled: ``line`` on this rank, or None
    where another rank prints it. Raised by ``agree`` and ``known_everywhere``; ``run`` prints ``line``."""

    def __init__(self, message: str, line: str | None):
        super().__init__(message)
        self.line = line


def message(err: SFTError) -> str | None:
    """The line this process prints for ``err`` (None: another rank prints it)."""
    if isinstance(err, Decided):
        return err.line
    if isinstance(err, ReportedElsewhere):
        return None
    rank = global_rank()
    return f"error: {err}" if rank == 0 else f"error: [rank {rank}] {err}"  # only this rank knows it


def known_everywhere(err: SFTError) -> Decided:
    """``err`` as every rank raises it alike (each learnt it from a collective): rank 0 prints it, once."""
    return Decided(str(err), f"error: {err}" if global_rank() == 0 else None)


def run(main, argv=None) -> None:
    """Call ``main(argv)``; a user error (``SFTError``) prints ``error: <message>`` once and exits 2."""
    try:
        main(argv)
    except SFTError as err:
        line = message(err)
        if line:
            print(line, file=sys.stderr, flush=True)
        _leave_group()
        sys.exit(2)
    if _in_a_group_of_several():
        # A launched rank can abort in C++ teardown at interpreter exit ("terminate called without an
        # active exception", seen in clean clones after a two-rank ZeRO run): leave the group, flush,
        # and exit without running static destructors. All files are closed by now.
        _leave_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _in_a_group_of_several() -> bool:
    """True while this process is one rank of a process group with others."""
    return dist.is_initialized() and dist.get_world_size() > 1


def _leave_group() -> None:
    """Close a group of several ranks before exiting, so no communication thread dies mid-flight."""
    if _in_a_group_of_several():
        dist.destroy_process_group()


def attempt(step) -> SFTError | None:
    """Run ``step()`` before the ranks are connected: its error is returned (to ``agree`` on once they
    are), or raised at once when this process is the whole job."""
    try:
        step()
    except SFTError as err:
        alone = dist.get_world_size() == 1 if dist.is_initialized() else not launched()
        if alone:
            raise
        return err
    return None


def agree(problem: SFTError | None) -> None:
    """Every rank passes its own outcome (None or its error); every rank raises if any rank failed."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        if problem is not None:
            raise problem
        return
    seen = all_ranks(None if problem is None else QUIET if isinstance(problem, ReportedElsewhere) else str(problem))
    if all(m is None for m in seen):
        return
    text = str(problem) if problem is not None else "another rank failed"
    raise Decided(text, _who_prints(seen, dist.get_rank())) from problem


def _who_prints(seen: list, rank: int) -> str | None:
    """This rank's line, given every rank's outcome (None: fine, QUIET: reported elsewhere, else a message).

    Each distinct message is printed by the first rank that hit it; plainly when every rank failed for
    that one reason, else with the rank."""
    mine = seen[rank]
    if mine in (None, QUIET) or seen.index(mine) != rank:
        return None
    real = {m for m in seen if m not in (None, QUIET)}
    if None not in seen and len(real) == 1:
        return f"error: {mine}"  # every rank failed, for one reason: say it once
    return f"error: [rank {rank}] {mine}"


def on_every_rank(step):
    """Run ``step()`` on every rank and agree on its outcome (see ``agree``); returns its result."""
    try:
        result = step()
    except SFTError as err:
        agree(err)
        raise
    agree(None)
    return result
