"""Update journals of finished jobs do not pile up in the agent's data directory forever."""

from __future__ import annotations

import os
import time
from pathlib import Path

from polyfleet.agent.firmware import FINISHED_KEEP_S, Journal, prune_finished


def _journal(directory: Path, job_id: str, phase: str, age_s: float) -> Path:
    journal = Journal(directory, job_id)
    journal.save(phase=phase, result={"ok": True})
    then = time.time() - age_s
    os.utime(journal.path, (then, then))
    return journal.path


def test_finished_journals_go_after_their_keep_time_unfinished_ones_never(tmp_path: Path) -> None:
    """Old finished journals are deleted; recent ones and any unfinished one stay."""
    old = FINISHED_KEEP_S + 86400
    gone = _journal(tmp_path, "job_old_done", "finished", old)
    kept_recent = _journal(tmp_path, "job_new_done", "finished", 3600)
    kept_unfinished = _journal(tmp_path, "job_old_ordered", "ordered", old)
    (tmp_path / "notes.txt").write_text("not a journal")

    assert prune_finished(tmp_path) == 1
    assert not gone.exists()
    assert kept_recent.exists() and kept_unfinished.exists()
    assert (tmp_path / "notes.txt").exists()
    assert prune_finished(tmp_path / "absent") == 0
