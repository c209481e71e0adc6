"""Run ``polyfleet`` as a real process and read what its user sees."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polyfleet.shared.process import polyfleet_argv

#: Every key of the shared error object, in every --json failure.
ERROR_KEYS = {"code", "message", "problems", "field", "rule", "file"}
#: How much faster than an admin's demo the tests run it (``--time-scale``): the same
#: timeline of faults, polls, tickets and rollout steps, in a fraction of the time.
TIME_SCALE = "5"


@dataclass(frozen=True)
class Run:
    """One finished command: exit status, standard output and standard error."""

    argv: tuple[str, ...]
    status: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


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


def stop(process: subprocess.Popen[Any], *, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not ended within ``timeout`` seconds."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


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
        stop(process, timeout=30)


@dataclass(frozen=True)
class DemoRun:
    """A running ``polyfleet demo``: its process, data directory, demo.json and output file."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    info: dict[str, Any]
    output: Path

    def api(self, path: str) -> Any:
        """GET ``path`` from the demo's controller with its admin token; the JSON answer."""
        request = urllib.request.Request(  # a loopback URL the demo wrote
            self.info["url"] + path,
            headers={"Authorization": f"Bearer {self.info['admin_token']}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def wait_for_devices(self, count: int, *, seconds: float = 300) -> list[dict[str, Any]]:
        """The controller's device list once it holds at least ``count`` devices."""
        deadline = time.monotonic() + seconds
        devices: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output.read_text("utf-8")[-3000:]
            devices = self.api("/api/v1/devices")["devices"]
            if len(devices) >= count:
                return devices
            time.sleep(1)  # waits-for: the agents' first polls to reach the controller
        raise AssertionError(f"{len(devices)} devices after {seconds} s, wanted {count}")


@contextlib.contextmanager
def running_demo(
    command: list[str], data_dir: Path, *, cwd: Path, seconds: int = 600
) -> Iterator[DemoRun]:
    """``COMMAND demo --duration SECONDS`` (at TIME_SCALE) until demo.json appears; stopped
    with SIGTERM after."""
    output = data_dir.parent / f"{data_dir.name}.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [*command, "demo", "--duration", str(seconds), "--data-dir", str(data_dir),
             "--listen", "127.0.0.1:0", "--time-scale", TIME_SCALE],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        demo_json = data_dir / "demo.json"
        deadline = time.monotonic() + 240
        while not demo_json.exists():
            assert process.poll() is None, output.read_text("utf-8")[-3000:]
            assert time.monotonic() < deadline, "demo.json never appeared"
            time.sleep(0.5)  # waits-for: the demo's controller to answer
        yield DemoRun(process, data_dir, json.loads(demo_json.read_text("utf-8")), output)
    finally:
        if process.poll() is None:
            stop(process, timeout=120)
