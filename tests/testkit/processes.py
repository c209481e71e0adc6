"""polyfleet commands run to their end (as processes of their own, or in this one), and a
controller serving as a process."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, NamedTuple

import aiohttp

from polyfleet.cli import main
from polyfleet.shared.process import polyfleet_argv
from testkit.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
#: Longer than any command takes on a busy CI machine: past it, the command is taken as hung.
COMMAND_TIMEOUT_S = 120.0
#: How long a controller may take to listen (a large journal is replayed first).
START_TIMEOUT_S = 60.0


class Finished(NamedTuple):
    """What a finished command printed and how it exited (unpacks as status, out, err)."""

    status: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def polyfleet(
    *args: str,
    expect: int | None = 0,
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO,
    timeout: float = COMMAND_TIMEOUT_S,
) -> Finished:
    """``polyfleet ARGS`` run to its end, ``stdin`` piped in when given.

    ``expect``: the exit status it must end with (None: any; the caller looks). ``env``: its
    whole environment (default: this process's).
    """
    process = await asyncio.create_subprocess_exec(
        *polyfleet_argv(*args),
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=None if env is None else dict(env),
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
    assert process.returncode is not None
    done = Finished(process.returncode, out.decode(), err.decode())
    if expect is not None:
        assert done.status == expect, f"polyfleet {' '.join(args)}: {done}"
    return done


async def start_controller(
    data_dir: Path,
    *options: str,
    listen: str = "127.0.0.1:0",
    stderr: int | IO[Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[asyncio.subprocess.Process, str]:
    """``polyfleet controller serve --data-dir DATA OPTIONS`` as a process of its own, on an
    OS-chosen loopback port unless ``listen`` says; once it listens, the process and its URL.

    A controller that says anything else first is killed, and the AssertionError quotes it.
    """
    process = await asyncio.create_subprocess_exec(
        *polyfleet_argv(
            "controller", "serve", "--data-dir", str(data_dir), *options, "--listen", listen
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        cwd=REPO,
        env=None if env is None else dict(env),
    )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT_S)
        assert b"listening on" in line, f"the controller did not start: {line!r}"
    except BaseException:
        if process.returncode is None:
            process.kill()
        await process.wait()
        raise
    return process, line.decode().strip().rsplit(" ", 1)[-1]


async def wait_active(url: str) -> None:
    """Return once the controller at ``url`` answers as the active one (``/healthz/active``)."""

    async def active() -> bool:
        try:
            async with http.get(f"{url}/healthz/active") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    async with aiohttp.ClientSession() as http:
        await wait_until(active, what=f"{url} to become the active controller")


async def controller_cli(
    *args: str,
    expect: int | None = 0,
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
) -> Finished:
    """``polyfleet controller ARGS`` run to its end (see :func:`polyfleet`)."""
    return await polyfleet("controller", *args, expect=expect, stdin=stdin, env=env)


async def in_process(
    *args: str, expect: int | None = 0, env: Mapping[str, str] | None = None
) -> Finished:
    """``polyfleet ARGS`` run by this process's own entry point (:func:`run_main`) in a thread,
    as the CLI has its own event loop, while this loop keeps serving. ``env`` and ``expect``
    as for :func:`polyfleet`: its whole environment for the run, the exit status it must end
    with. One at a time: standard output and the environment are the whole process's."""

    def run() -> Finished:
        with environment(env):
            return run_main(*args, expect=None)

    done = await asyncio.to_thread(run)
    if expect is not None:
        assert done.status == expect, f"polyfleet {' '.join(args)}: {done}"
    return done


def run_main(*args: str, expect: int | None = 0) -> Finished:
    """``polyfleet ARGS`` run by ``polyfleet.cli.main`` in this process: the cheaper form, where
    a process of its own adds nothing to what a test checks. ``expect`` as for
    :func:`polyfleet`."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(list(args))
        except SystemExit as exc:  # --help and --version end so
            status = exc.code if isinstance(exc.code, int) else 1
    done = Finished(status, out.getvalue(), err.getvalue())
    if expect is not None:
        assert done.status == expect, f"polyfleet {' '.join(args)}: {done}"
    return done


@contextlib.contextmanager
def environment(env: Mapping[str, str] | None) -> Iterator[None]:
    """``env`` as this process's whole environment for the block (None: as it is), then the
    old one back."""
    if env is None:
        yield
        return
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
