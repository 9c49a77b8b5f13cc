"""``SFTError``: a problem with the user's input, reported as one line naming the fix.

Every ``python -m sftlib...`` command prints it as ``error: <message>`` and exits 2; who prints it
under several ranks (once, or by the rank that hit it) is decided in ``sftlib.cli`` alone.
"""

from __future__ import annotations


class SFTError(Exception):
    """A problem with the user's input; command lines print it as one line and exit 2."""


class ReportedElsewhere(SFTError):
    """An error this rank learnt from another process, which reports it itself (a rank waiting for
    its node's dataset cache when the builder failed): this rank stops with it and prints nothing."""
