"""Whole-or-nothing writes: the old file stays until the new one is complete, no leftovers."""

from __future__ import annotations

from pathlib import Path

import pytest

from polyfleet.shared.durable import SHARED_MODE, StagedFile, write_atomically


def test_write_replaces_whole_and_private(tmp_path: Path) -> None:
    """Text and bytes replace the old content, mode 0600 unless told; no temporary stays."""
    path = tmp_path / "state" / "pins.json"
    write_atomically(path, "old")
    write_atomically(path, b"new")
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o600
    write_atomically(path, "shared", mode=SHARED_MODE, sync=False)
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["pins.json"]


def test_a_staged_file_left_by_an_error_replaces_nothing(tmp_path: Path) -> None:
    """A stream cut short (an exception) leaves the old file as it was and no temporary."""
    target = tmp_path / "backup.json"
    target.write_text("the good one")
    with pytest.raises(ConnectionError), StagedFile(tmp_path, name=target.name) as staged:
        staged.write(b"half of a ")
        raise ConnectionError("the peer went away")
    assert target.read_text() == "the good one"
    assert [p.name for p in tmp_path.iterdir()] == ["backup.json"]


def test_a_staged_file_is_checked_whole_then_named_at_the_end(tmp_path: Path) -> None:
    """finish() makes it complete for a check; commit() gives it a name known only then."""
    with StagedFile(tmp_path / "packages", mode=SHARED_MODE) as staged:
        staged.write(b"firmware ")
        staged.write(b"bytes")
        staged.finish()
        assert staged.path.read_bytes() == b"firmware bytes" and staged.size == 14
        final = tmp_path / "packages" / "abc123.bin"
        staged.commit(final)
    assert final.read_bytes() == b"firmware bytes"
    assert [p.name for p in final.parent.iterdir()] == ["abc123.bin"]
