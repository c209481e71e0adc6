"""Whole-or-nothing file writes: a reader (or a restart after a crash) never sees half a file.

Every file polyfleet replaces goes through here: :func:`write_atomically` for content in
memory, :class:`StagedFile` for content that streams in (uploads, downloads, backups), and
:func:`move_into_place` for a file or folder that was finished elsewhere. All of them write
beside the target, fsync, rename, and fsync the folder. Blocking: call them through
``asyncio.to_thread`` from the event loop.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

#: Files that may hold secrets or pins are readable by their owner only.
PRIVATE_MODE = 0o600
#: Files anyone on the machine may read (packages served to devices, a lab's ready file).
SHARED_MODE = 0o644


def write_atomically(
    path: Path,
    data: bytes | str,
    *,
    mode: int = PRIVATE_MODE,
    owner: tuple[int, int] | None = None,
    sync: bool = True,
) -> None:
    """Replace ``path`` with ``data`` (text as UTF-8): write a sibling, fsync, rename.

    ``owner`` (uid, gid) is given to the file before it takes the place of the old one, so
    that it is never there with the wrong owner. ``sync=False`` skips the fsyncs: still
    whole or absent for a reader, but a power cut may take it back (a lab's own files).
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with StagedFile(path.parent, mode=mode, name=path.name) as staged:
        staged.write(payload)
        if owner is not None:
            os.fchown(staged.handle.fileno(), *owner)
        staged.commit(path, sync=sync)


def move_into_place(source: Path, target: Path, *, sync: bool = True) -> None:
    """Put the finished (fsynced) file or folder ``source`` at ``target``, in the same folder."""
    os.replace(source, target)
    if sync:
        fsync_directory(target.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StagedFile:
    """A file written in ``directory`` under a temporary name, then put in place whole.

    Write to it, then :meth:`commit` it to its name (known only at the end, if need be: a
    package named by its digest); :meth:`finish` alone makes it complete for a check
    before it replaces anything. Used as a context manager, a file not committed (or left
    by an exception) is removed.
    """

    def __init__(self, directory: Path, *, mode: int = PRIVATE_MODE, name: str = "") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(
            prefix=f".{name or 'incoming'}.", suffix=".tmp", dir=directory
        )
        self.path = Path(temporary)
        try:
            os.fchmod(fd, mode)
            self.handle: BinaryIO = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        self.size = 0
        self._committed = False

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        self.size += len(data)

    def finish(self, *, sync: bool = True) -> None:
        """Flush, fsync and close: the content is complete on disk (not yet in place)."""
        if self.handle.closed:
            return
        try:
            self.handle.flush()
            if sync:
                os.fsync(self.handle.fileno())
        finally:
            self.handle.close()

    def commit(self, target: Path, *, sync: bool = True) -> None:
        """Finish, then replace ``target`` (in the same folder) with this file."""
        self.finish(sync=sync)
        move_into_place(self.path, target, sync=sync)
        self._committed = True

    def discard(self) -> None:
        """Drop the file (nothing is replaced); harmless after a commit."""
        self.handle.close()
        if not self._committed:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> StagedFile:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.discard()
