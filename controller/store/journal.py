"""Append-only, fsynced journal of store changes; blocking, so only ever called from a thread.

A file ``journal/<generation>.log`` holds one change per line: ``<crc32 hex> <json>\\n``.
A crash can leave a torn last line; replay stops at the first line whose checksum fails
(nothing after it was ever acknowledged, since acknowledgement waits for the fsync). A write
that fails (disk full, read-only, I/O error) may leave part of its lines in the file: the
writer lets go of the file and, before writing again, cuts it back to what the last
successful fsync covered, so lines written after a recovery are never behind a torn one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from polyfleet.shared.durable import fsync_directory

log = logging.getLogger(__name__)


def journal_path(directory: Path, generation: int) -> Path:
    return directory / f"{generation:012d}.log"


def journal_generations(directory: Path) -> list[int]:
    """Generations of the journal files present, oldest first."""
    found = []
    for path in directory.glob("*.log"):
        if path.stem.isdigit():
            found.append(int(path.stem))
    return sorted(found)


#: Make a rename or a new file in a folder durable (the name its users here know it by).
fsync_dir = fsync_directory


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON of a document tree; TypeError for a value with no JSON form.

    orjson is about five times faster than pydantic-core's ``to_json`` and ten times faster
    than ``json.dumps`` on report-sized documents, with the same bytes for plain JSON values;
    ingestion encodes every report once and every snapshot encodes the whole state. It refuses
    what UTF-8 cannot hold (a lone surrogate from a ``\\ud800`` escape), integers beyond 64
    bits and non-string keys; the standard encoder writes those (as an escape, digits, a string
    key), and says TypeError for objects of unknown types, as orjson does.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_UTC_Z)
    except orjson.JSONEncodeError:
        # Documents are trees (never cyclic), so the cycle check is skipped: it costs ~15%.
        return json.dumps(value, separators=(",", ":"), check_circular=False).encode("ascii")


def encode_line(record: dict[str, Any]) -> bytes:
    body = encode_json(record)
    return b"%08x %s\n" % (zlib.crc32(body), body)


class JournalWriteError(OSError):
    """Writing the journal failed; the first ``done`` records given were made durable."""

    def __init__(self, cause: OSError, done: int, filename: str | None = None) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause), filename or cause.filename)
        self.cause = cause
        self.done = done


class JournalWriter:
    """Writes records to the file of their generation, one fsync per call of ``write``."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._generation: int | None = None
        self._file: Any = None
        self.bytes_written = 0
        #: After a failed write: the file to cut back, and its length at the last good fsync.
        self._repair: tuple[Path, int] | None = None
        #: Size of the open file as its last fsync left it.
        self._good_size = 0
        #: A new file whose directory entry is not known to be durable yet.
        self._unsynced_dir = False

    def write(self, records: list[tuple[int, bytes]]) -> int:
        """Append encoded ``(generation, line)`` pairs in order and fsync; return bytes written.

        On failure raises ``JournalWriteError`` saying how many records are durable; the
        caller gives the rest again once the disk takes writes.
        """
        total = 0
        done = 0
        chunk: list[bytes] = []
        try:
            for generation, line in records:
                if generation != self._generation:
                    total += self._flush(chunk)
                    done += len(chunk)
                    chunk = []
                    self._switch(generation)
                chunk.append(line)
            total += self._flush(chunk)
        except OSError as exc:
            # A failed write or fsync names no file: say which one it was.
            where = exc.filename or (None if self._file is None else self._file.name)
            self._abandon()
            raise JournalWriteError(exc, done, where) from exc
        return total

    def _flush(self, chunk: list[bytes]) -> int:
        if not chunk or self._file is None:
            return 0
        data = b"".join(chunk)
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._unsynced_dir:
            fsync_dir(self._directory)
            self._unsynced_dir = False
        self._good_size += len(data)
        self.bytes_written += len(data)
        return len(data)

    def _switch(self, generation: int) -> None:
        self.close()
        path = journal_path(self._directory, generation)
        if self._repair is not None:
            self._cut_back(*self._repair)
            self._repair = None
        existed = path.exists()
        self._file = open(path, "ab")  # noqa: SIM115 - kept open across calls on purpose
        self._generation = generation
        self._good_size = self._file.tell()
        self.bytes_written = 0
        if not existed:
            self._unsynced_dir = True

    def _abandon(self) -> None:
        """Let go of the file after a failed write; the next write cuts it back first."""
        if self._file is not None:
            self._repair = (Path(self._file.name), self._good_size)
            with contextlib.suppress(OSError):
                self._file.close()
        self._file = None
        self._generation = None

    @staticmethod
    def _cut_back(path: Path, size: int) -> None:
        """Drop what a failed write left after the last good fsync of ``path``."""
        with contextlib.suppress(FileNotFoundError), open(path, "r+b") as handle:
            if os.fstat(handle.fileno()).st_size > size:
                handle.truncate(size)
                handle.flush()
                os.fsync(handle.fileno())

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError:
                self._abandon()
                raise
            self._file.close()
            self._file = None
            self._generation = None


def read_journal(path: Path) -> Iterator[dict[str, Any]]:
    """Records of one journal file; a torn or corrupt tail is logged and cut off."""
    with open(path, "rb") as handle:
        data = handle.read()
    offset = 0
    lineno = 0
    while offset < len(data):
        end = data.find(b"\n", offset)
        lineno += 1
        if end < 0:
            _report_tail(path, lineno, len(data) - offset, "torn last line")
            _truncate(path, offset)
            return
        line = data[offset:end]
        record = _decode(line)
        if record is None:
            _report_tail(path, lineno, len(data) - offset, "checksum mismatch")
            _truncate(path, offset)
            return
        yield record
        offset = end + 1


def _decode(line: bytes) -> dict[str, Any] | None:
    crc_text, _, body = line.partition(b" ")
    try:
        if int(crc_text, 16) != zlib.crc32(body):
            return None
        record = _loads(body)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _loads(body: bytes) -> Any:
    """orjson's parser, and the standard one for what orjson refuses (an escaped surrogate)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def _report_tail(path: Path, lineno: int, size: int, why: str) -> None:
    # Only an unacknowledged write can be torn: acknowledgement waits for fsync of the line.
    log.warning("journal %s: dropping %d bytes from line %d on (%s)", path, size, lineno, why)


def _truncate(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(offset)
        handle.flush()
        os.fsync(handle.fileno())
