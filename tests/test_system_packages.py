"""tests/system-packages, run as a user who may not install: it names the one command to run."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "system-packages"
#: What the script and a fresh Debian's PATH offer: every command there is linked in,
#: less the one a test takes away.
SYSTEM_BIN = ("/usr/local/bin", "/usr/bin", "/bin")


@pytest.fixture
def bin_dir() -> Iterator[Path]:
    """A folder any user can read, for a PATH of links to the system's commands."""
    folder = Path(tempfile.mkdtemp(prefix="polyfleet-path-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def path_without(folder: Path, missing: str) -> str:
    """A PATH of one folder linking every system command but ``missing``."""
    for directory in SYSTEM_BIN:
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            target = folder / entry.name
            if entry.name != missing and not target.exists() and os.access(entry.path, os.X_OK):
                target.symlink_to(entry.path)
    return str(folder)


def run_unprivileged(path: str) -> subprocess.CompletedProcess[str]:
    """The script as the unprivileged ``nobody`` when root, else as the user running tests."""
    drop = []
    if os.getuid() == 0:
        drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    return subprocess.run(
        [*drop, "/bin/bash", str(SCRIPT)],
        env={"PATH": path, "LANG": "C.UTF-8"},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_nothing_missing_runs_on_silently(bin_dir: Path) -> None:
    """With every package there, the check prints nothing and lets the tests run (exit 0)."""
    done = run_unprivileged(path_without(bin_dir, missing=""))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_a_missing_package_stops_with_the_command_that_installs_it(bin_dir: Path) -> None:
    """Without faketime and unable to install, it prints the one install command and exits 1."""
    done = run_unprivileged(path_without(bin_dir, missing="faketime"))
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines[-1] == "sudo apt-get install -y --no-install-recommends faketime", lines
    assert len(lines) == 2 and "missing" in lines[0]
