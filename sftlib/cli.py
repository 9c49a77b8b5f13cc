"""The one way every ``python -m sftlib...`` command ends on bad input: ``error: ...``, exit 2.

Under a launcher each rank may fail on its own (its node's data file, its node's disk). A step that
every rank runs goes through ``on_every_rank``: the ranks compare their outcomes, so an error every
rank hit is printed once (plainly), an error only some ranks hit is printed by the first of them
with its rank (``error: [rank 1] ...``), and every rank exits 2 instead of waiting for the others.
"""

from __future__ import annotations

import os
import sys

from sftlib.dist import all_ranks, global_rank
from sftlib.errors import SFTError

QUIET = "\0quiet"  # what a rank sends when another rank reports the failure


def message(err: SFTError) -> str | None:
    """The line this process prints for ``err`` (None: another rank prints it)."""
    if err.quiet:
        return None
    if err.rank is not None:
        return f"error: [rank {err.rank}] {err}"
    rank = global_rank()
    if err.everywhere or rank == 0:
        return f"error: {err}"
    return f"error: [rank {rank}] {err}"  # raised outside a shared step: only this rank knows it


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
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A launched rank can abort in C++ teardown at interpreter exit ("terminate called without an
        # active exception", seen in clean clones after a two-rank ZeRO run): leave the group, flush,
        # and exit without running static destructors. All files are closed by now.
        _leave_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _leave_group() -> None:
    """Close a launched job's process group before exiting, so no communication thread dies mid-flight."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_initialized():
        dist.destroy_process_group()


def attempt(step) -> SFTError | None:
    """Run ``step()`` before the ranks are connected: its error is returned (to ``agree`` on once they
    are), or raised at once when this process is the whole job."""
    try:
        step()
    except SFTError as err:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            raise
        return err
    return None


def agree(problem: SFTError | None) -> None:
    """Every rank passes its own outcome (None or its error); every rank raises if any rank failed."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        if problem is not None:
            raise problem
        return
    seen = all_ranks(None if problem is None else QUIET if problem.quiet else str(problem))
    if all(m is None for m in seen):
        return
    rank = dist.get_rank()
    real = {r: m for r, m in enumerate(seen) if m not in (None, QUIET)}
    err = problem if problem is not None else SFTError("another rank failed")
    err.quiet, err.rank, err.everywhere = True, None, False
    if problem is not None and str(problem) in real.values() and min(
            r for r, m in real.items() if m == str(problem)) == rank:
        err.quiet = False
        if None not in seen and len(set(real.values())) == 1:
            err.everywhere = True  # every rank failed, for one reason: say it once
        else:
            err.rank = rank
    raise err


def on_every_rank(step):
    """Run ``step()`` on every rank and agree on its outcome (see ``agree``); returns its result."""
    try:
        result = step()
    except SFTError as err:
        agree(err)
        raise
    agree(None)
    return result
