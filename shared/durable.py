"""Whole-or-nothing file writes: a reader (or a restart after a crash) never sees half a file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

#: Files that may hold secrets or pins are readable by their owner only.
PRIVATE_MODE = 0o600


def write_atomically(path: Path, data: bytes | str, *, mode: int = PRIVATE_MODE) -> None:
    """Replace ``path`` with ``data``: write a sibling, fsync, rename, fsync the folder.

    Blocking: call it through ``asyncio.to_thread`` from the event loop.
    """
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_directory(directory)


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
