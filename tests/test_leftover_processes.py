"""A test run that leaves a process behind fails, names the process and kills it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
LEAKING_TEST = '''
import subprocess


def test_starts_a_process_and_forgets_it():
    """Leaves a process of its own session behind, as a daemon would."""
    subprocess.Popen(["sleep", "300"], start_new_session=True)
'''


def test_a_process_left_behind_fails_the_run_and_is_killed(tmp_path: Path) -> None:
    """A run whose test leaves `sleep 300` running exits 1, names it (pid) and kills it."""
    (tmp_path / "test_leaks.py").write_text(LEAKING_TEST, encoding="utf-8")
    done = subprocess.run(
        # This folder's conftest.py, loaded as a plugin: the run is checked as the suite is.
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path / "test_leaks.py")],
        env={**os.environ, "PYTHONPATH": str(TESTS)},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-3000:]
    assert "1 failed, 1 passed" in done.stdout, done.stdout[-3000:]
    # The report may be printed more than once (failures and summary): one process, named.
    pids = {int(found) for found in re.findall(r"pid (\d+): sleep 300$", done.stdout, re.M)}
    assert len(pids) == 1, done.stdout[-3000:]
    (pid,) = pids
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # waits-for: the killed process to be reaped
    assert not Path(f"/proc/{pid}").exists(), f"pid {pid} still runs"
