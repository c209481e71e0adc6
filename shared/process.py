"""How one polyfleet process starts another: the same interpreter, nothing shadowing imports."""

from __future__ import annotations

import sys


def polyfleet_argv(*args: str) -> list[str]:
    """``python -P -m polyfleet ARGS`` with this interpreter.

    ``-P`` keeps the working directory off ``sys.path``: a data directory that holds a
    folder named like one of our packages (a demo's ``controller/``) cannot shadow it.
    """
    return [sys.executable, "-P", "-m", "polyfleet", *args]
