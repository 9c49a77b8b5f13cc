"""``SFTError``: a problem with the user's input, reported as one line naming the fix.

Every ``python -m sftlib...`` command prints it as ``error: <message>`` and exits 2; how it is printed
under several ranks (which rank says it, once or per rank) is decided in ``sftlib.cli`` alone.
"""

from __future__ import annotations


class SFTError(Exception):
    """A problem with the user's input; command lines print it as one line and exit 2.

    Under several ranks ``sftlib.cli`` decides who prints it: ``rank`` names the one rank that hit it
    (``error: [rank 1] ...``), ``everywhere`` means every rank did (printed once, plainly), and
    ``quiet`` means another rank reports it.
    """

    rank: int | None = None
    everywhere: bool = False
    quiet: bool = False
