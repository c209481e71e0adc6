"""``polyfleet demo``: the whole product on simulated devices (grows with each part)."""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--data-dir", default="polyfleet-demo")
