"""How every polyfleet command fails: one JSON error object, one line for people, fixed exits."""

from __future__ import annotations

import argparse
import errno
import json
import socket
import ssl
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from polyfleet.shared.errors import PolyfleetError

# A command raises CommandFailed; polyfleet.cli.main is the one place that prints it
# (with --json as one object on standard output, always as lines on standard error) and
# turns it into the exit status. docs/cli.md documents the object, the codes and these:
#: Done.
EXIT_OK = 0
#: The command ran and could not do what was asked: bad rows in a file, a name that is
#: not there, no store in the data directory, the controller refused or cannot be reached.
EXIT_FAILED = 1
#: The command line is wrong (a missing or unknown flag, a value that cannot be read); also a
#: wrong configuration for serve, sim and agent, a wrong moment or plan for controller sla.
EXIT_USAGE = 2
#: agent probe: the device could not be read.
EXIT_DEVICE = 3
#: Interrupted (Ctrl-C).
EXIT_INTERRUPTED = 130
#: 128 + SIGPIPE, what a shell reports for a writer whose reader went away.
EXIT_BROKEN_PIPE = 141


class CommandFailed(PolyfleetError):
    """A command could not do what was asked; printed by ``polyfleet.cli.main``.

    ``code`` is a stable word for scripts (docs/cli.md lists them), ``message`` a
    sentence for people with no rule ids in it (those go in ``rule``), ``problems``
    every single thing wrong when there are several (each a mapping with at least
    ``message``, and ``line``, ``column``, ``field`` or ``rule`` where they apply).
    ``extra`` holds top-level keys printed beside ``error`` in JSON, kept for scripts
    written against an earlier shape of that command. ``label`` starts the line on
    standard error (``error`` unless the command has always used its own name).
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "failed",
        exit_status: int = EXIT_FAILED,
        problems: Sequence[Mapping[str, Any]] = (),
        field: str | None = None,
        rule: str | None = None,
        file: str | Path | None = None,
        extra: Mapping[str, Any] | None = None,
        label: str = "error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.exit_status = exit_status
        self.problems = [dict(problem) for problem in problems]
        self.field = field
        self.rule = rule
        self.file = None if file is None else str(file)
        self.extra = dict(extra or {})
        self.label = label

    def to_json(self) -> dict[str, Any]:
        """The document printed on standard output with ``--json``."""
        error = {
            "code": self.code,
            "message": self.message,
            "problems": self.problems,
            "field": self.field,
            "rule": self.rule,
            "file": self.file,
        }
        return {**self.extra, "error": error}

    def lines(self) -> list[str]:
        """What people read on standard error: the message, then one line per problem."""
        lines = [f"{self.label}: {self.message}"]
        for problem in self.problems:
            text = problem_text(problem)
            lines.append(f"  {self.file}: {text}" if self.file else f"  {text}")
        return lines


class UsageError(CommandFailed):
    """The command line cannot be parsed; printed as argparse prints it, with the usage."""

    def __init__(self, message: str, *, usage: str, prog: str) -> None:
        super().__init__(message, code="usage", exit_status=EXIT_USAGE)
        self.usage = usage
        self.prog = prog

    def lines(self) -> list[str]:
        return [self.usage.rstrip("\n"), f"{self.prog}: error: {self.message}"]


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors reach ``polyfleet.cli.main`` instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, usage=self.format_usage(), prog=self.prog)


def problem_text(problem: Mapping[str, Any]) -> str:
    """``line 3, column plan: message`` (only the parts the problem has)."""
    where = [
        f"{name} {problem[name]}"
        for name in ("line", "column", "field")
        if problem.get(name) not in (None, "")
    ]
    return ", ".join(where) + ": " + str(problem["message"]) if where else str(problem["message"])


def report_failure(
    failure: CommandFailed,
    *,
    as_json: bool,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Print ``failure`` (JSON on stdout when asked, always the lines on stderr); its exit."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    if as_json:
        out.write(json.dumps(failure.to_json(), ensure_ascii=False) + "\n")
        out.flush()
    for line in failure.lines():
        err.write(line + "\n")
    err.flush()
    return failure.exit_status


_OS_REASONS = {
    errno.ENOENT: "no such file",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EISDIR: "is a directory, not a file",
    errno.ENOTDIR: "a part of the path is not a directory",
}


def unreadable_file(
    path: str | Path, exc: OSError, *, what: str = "", exit_status: int = EXIT_FAILED
) -> CommandFailed:
    """A failure naming the file that could not be read and why, in words."""
    reason = _OS_REASONS.get(exc.errno or 0) or exc.strerror or str(exc)
    subject = f"{what} {path}" if what else str(path)
    return CommandFailed(
        f"cannot read {subject}: {reason}",
        code="file_not_found" if exc.errno == errno.ENOENT else "file_unreadable",
        exit_status=exit_status,
        file=path,
    )


_CONNECT_REASONS = {
    errno.ECONNREFUSED: "connection refused: nothing listens at that address and port",
    errno.ECONNRESET: "the connection was reset",
    errno.ETIMEDOUT: "the connection timed out",
    errno.EHOSTUNREACH: "no route to that host",
    errno.ENETUNREACH: "the network is unreachable",
}


def connection_reason(exc: BaseException) -> str:
    """Why a connection failed, in words, from ``exc`` or what it was raised from."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) or "Certificate" in type(seen).__name__:
            return "its TLS certificate is not trusted here"
        if isinstance(seen, ssl.SSLError):
            return "the TLS handshake failed"
        if isinstance(seen, socket.gaierror):
            return "the host name cannot be resolved"
        if isinstance(seen, TimeoutError):
            return "no answer in time"
        if isinstance(seen, OSError) and seen.errno in _CONNECT_REASONS:
            return _CONNECT_REASONS[seen.errno]
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


def unreachable_controller(url: str, exc: BaseException, *, label: str = "error") -> CommandFailed:
    """The controller at ``url`` did not answer: why, and what to check."""
    return CommandFailed(
        f"cannot reach the controller at {url} ({connection_reason(exc)}). Check that the "
        "controller runs (systemctl status polyfleet-controller), that the URL's scheme, host "
        "and port are the ones it listens on, that no firewall or proxy is in the way, and "
        "for https that its certificate is trusted (a CA file)",
        code="unreachable",
        label=label,
    )
