"""The polyfleet command: one entry point for the lab, agent, controller and demo."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from polyfleet.shared.cli_errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    ArgumentParser,
    CommandFailed,
    report_failure,
)

#: Third-party loggers that narrate every request or job run; shown only at DEBUG.
CHATTY_LOGGERS = ("aiohttp.access", "apscheduler", "paramiko.transport")

#: Group name -> module with ``register(parser)``; plain dict, no import magic. Only the
#: group a command line names is imported: each pulls in a large part of the product (the
#: demo all of it), and a command should not wait for the others.
GROUPS = {
    "sim": ("polyfleet.simulator.cli", "run the Poly device lab (simulated devices on loopback)"),
    "agent": ("polyfleet.agent.cli", "the on-site agent: probe, discover, enroll, run"),
    "controller": ("polyfleet.controller.cli", "the central controller and its admin commands"),
    "demo": ("polyfleet.demo", "run the whole product on simulated devices"),
}
#: Options of ``polyfleet`` itself that take a value (the value is not a group's name).
VALUED_OPTIONS = ("--log-level",)


def installed_version() -> str:
    """The installed distribution's version (``polyfleet --version``)."""
    try:
        return version("polyfleet")
    except PackageNotFoundError:
        return "unknown (not installed)"


def named_group(arguments: Sequence[str]) -> str | None:
    """The group a command line names (its first word that is not an option), if any."""
    words = iter(arguments)
    for word in words:
        if word == "--":
            return next(words, None)
        if word in VALUED_OPTIONS:
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def build_parser(arguments: Sequence[str] | None = None) -> ArgumentParser:
    """The whole parser; given a command line, only the group it names has its commands."""
    parser = ArgumentParser(
        prog="polyfleet",
        description="One command for the Poly device lab, the site agent, the controller "
        "and the demo. Errors and exit statuses: see docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"polyfleet {installed_version()}")
    parser.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)"
    )
    groups = parser.add_subparsers(dest="group", metavar="GROUP", required=True)
    wanted = None if arguments is None else named_group(arguments)
    for name, (module, help_text) in GROUPS.items():
        group: argparse.ArgumentParser = groups.add_parser(
            name, help=help_text, description=help_text
        )
        if arguments is None or name == wanted:
            importlib.import_module(module).register(group)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        status = _main(arguments)
        sys.stdout.flush()  # inside the try: a closed pipe shows up here, not at exit
        return status
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly. Point stdout at /dev/null so that
        # the interpreter's final flush does not complain about the closed pipe either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _main(arguments: list[str]) -> int:
    parser = build_parser(arguments)
    try:
        args = parser.parse_args(arguments)
    except CommandFailed as exc:
        # A usage error; with --json on the line, scripts still get the one error object.
        return report_failure(exc, as_json="--json" in arguments)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if logging.getLogger().level > logging.DEBUG:
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(func(args))
    except CommandFailed as exc:
        return report_failure(exc, as_json=bool(getattr(args, "json", False)))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        raise
    except Exception as exc:
        # A fault of ours: the traceback goes to standard error for the bug report, and a
        # script reading --json still gets the one error object.
        traceback.print_exc()
        failure = CommandFailed(
            f"unexpected error ({type(exc).__name__}: {exc}); the traceback above says where",
            code="internal",
        )
        return report_failure(failure, as_json=bool(getattr(args, "json", False)))


if __name__ == "__main__":
    sys.exit(main())
