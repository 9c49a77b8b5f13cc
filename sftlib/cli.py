"""The one way every ``python -m sftlib...`` command ends on bad input: ``error: ...``, exit 2."""

from __future__ import annotations

import os
import sys

from sftlib.utils import SFTError


def run(main, argv=None) -> None:
    """Call ``main(argv)``; a user error (``SFTError``) prints ``error: <message>`` once and exits 2.

    Under a launcher every rank raises the same error; only rank 0 prints it.
    """
    try:
        main(argv)
    except SFTError as err:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
