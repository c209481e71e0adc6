"""Run ``polyfleet`` as a real process and read what its user sees."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Every key of the shared error object, in every --json failure.
ERROR_KEYS = {"code", "message", "problems", "field", "rule", "file"}


@dataclass(frozen=True)
class Run:
    """One finished command: exit status, standard output and standard error."""

    argv: tuple[str, ...]
    status: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def polyfleet_argv(*args: str) -> list[str]:
    return [sys.executable, "-P", "-m", "polyfleet", *args]


def run(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60) -> Run:
    """``polyfleet ARGS`` in ``cwd``, to completion."""
    done = subprocess.run(
        polyfleet_argv(*args),
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
    )
    return Run(tuple(args), done.returncode, done.stdout, done.stderr)


def run_all(commands: list[list[str]], *, cwd: Path, timeout: float = 60) -> list[Run]:
    """Several ``polyfleet`` commands at once (each its own process), in the order given."""
    started = [
        (
            argv,
            subprocess.Popen(
                polyfleet_argv(*argv),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=cwd,
            ),
        )
        for argv in commands
    ]
    runs = []
    for argv, process in started:
        out, err = process.communicate(timeout=timeout)
        runs.append(Run(tuple(argv), process.returncode, out, err))
    return runs


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@contextlib.contextmanager
def running_controller(data_dir: Path, *, cwd: Path) -> Iterator[str]:
    """``polyfleet controller serve`` on an OS-chosen loopback port; yields its URL."""
    process = subprocess.Popen(
        polyfleet_argv(
            "controller", "serve", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=cwd,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the server prints it once it listens
        assert "listening on" in line, line
        yield line.strip().rsplit(" ", 1)[-1]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
