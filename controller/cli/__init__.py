"""``polyfleet controller``: the server and its admin commands."""

from __future__ import annotations

import argparse

from polyfleet.controller.cli import core, entitlement, maintenance, rollout, store, tickets

#: Each module adds its own subcommands; a plain list, no import magic.
SECTIONS = (core, entitlement, tickets, maintenance, rollout, store)


def register(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for section in SECTIONS:
        section.register(commands)
