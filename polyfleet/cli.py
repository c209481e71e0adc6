"""``polyfleet``: the one console script, with groups sim, agent, controller and demo."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from polyfleet import demo
from polyfleet.agent import cli as agent_cli
from polyfleet.controller import cli as controller_cli
from polyfleet.simulator import cli as simulator_cli

#: Third-party loggers that narrate every request or job run; shown only at DEBUG.
CHATTY_LOGGERS = ("aiohttp.access", "apscheduler", "paramiko.transport")

#: Group name -> module with ``register(parser)``; plain dict, no import magic.
GROUPS = {
    "sim": (simulator_cli, "run the Poly device lab (simulated devices on loopback)"),
    "agent": (agent_cli, "the on-site agent: probe, discover, enroll, run"),
    "controller": (controller_cli, "the central controller and its admin commands"),
    "demo": (demo, "run the whole product on simulated devices"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polyfleet", description=__doc__)
    parser.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)"
    )
    groups = parser.add_subparsers(dest="group", metavar="GROUP", required=True)
    for name, (module, help_text) in GROUPS.items():
        module.register(groups.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
        parser.parse_args([*(argv or sys.argv[1:]), "--help"])
        return 2
    try:
        return int(func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
