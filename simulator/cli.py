"""``polyfleet sim``: run the device lab of a fleet file until stopped."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path

from polyfleet.shared.cli_errors import EXIT_USAGE, CommandFailed
from polyfleet.shared.durable import write_atomically
from polyfleet.shared.errors import ConfigError
from polyfleet.simulator.fleet import load_fleet
from polyfleet.simulator.lab import Lab

DEFAULT_DATA_DIR = "polyfleet-lab"
DEFAULT_CONTROL_LISTEN = "127.0.0.1:0"


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` on loopback, for ``--control-listen``."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:8480)")
    if not host.startswith("127."):
        raise argparse.ArgumentTypeError(
            f"{host} is not a loopback address: the lab stays on 127.0.0.0/8"
        )
    return host, int(port)


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fleet", required=True, type=Path, help="fleet TOML file")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(DEFAULT_DATA_DIR),
        help=f"where certificates and host keys are kept (default ./{DEFAULT_DATA_DIR})",
    )
    parser.add_argument(
        "--control-listen",
        type=parse_listen,
        default=parse_listen(DEFAULT_CONTROL_LISTEN),
        metavar="HOST:PORT",
        help="control API address (default 127.0.0.1:0, an OS-chosen port)",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        help="write JSON with the control URL and every device once all listen",
    )
    parser.add_argument(
        "--duration", type=float, help="run this many seconds, then stop (default: until Ctrl-C)"
    )
    parser.add_argument("--json", action="store_true", help="print the ready JSON on stdout")
    parser.set_defaults(func=run)


def _summary(lab: Lab) -> str:
    lines = [
        f"lab running: {len(lab.devices)} devices, control API {lab.control_url}",
        f"  {'SERIAL':<16} {'MODEL':<11} {'SITE/ROOM':<22} REST, SSH, FIRMWARE",
    ]
    for d in lab.devices.values():
        lines.append(
            f"  {d.serial:<16} {d.model:<11} {d.site + '/' + d.room:<22} "
            f"https://{d.address}:{d.rest_port}  ssh {d.address}:{d.ssh_port}  "
            f"{d.firmware_version}-{d.build}"
        )
    for o in lab.other_hosts.values():
        ssh = f"  ssh {o.address}:{o.ssh_port}" if o.ssh_port is not None else ""
        lines.append(
            f"  {o.name:<16} {'not Poly: ' + o.spec.kind:<22} {o.site + '/' + o.room:<22} "
            f"https://{o.address}:{o.rest_port}{ssh}"
        )
    return "\n".join(lines)


async def serve(args: argparse.Namespace) -> int:
    fleet = load_fleet(args.fleet)
    host, port = args.control_listen
    lab = Lab(fleet, data_dir=args.data_dir, control_host=host, control_port=port)
    if sys.stderr.isatty():
        print(f"starting {sum(1 for _ in fleet.placed_devices())} devices...", file=sys.stderr)
    await lab.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        info = lab.ready_info()
        if args.ready_file is not None:
            ready = json.dumps(info, indent=2, ensure_ascii=False) + "\n"
            await asyncio.to_thread(write_atomically, args.ready_file, ready, mode=0o644)
        if args.json:
            print(json.dumps(info, ensure_ascii=False), flush=True)
        else:
            print(_summary(lab), flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=args.duration)
    finally:
        await lab.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    if sys.stderr.isatty():
        print("lab stopped", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(serve(args))
    except ConfigError as exc:
        raise CommandFailed(
            str(exc), code="config", exit_status=EXIT_USAGE, label="polyfleet sim"
        ) from None
    except OSError as exc:
        raise CommandFailed(
            f"cannot listen: {exc}", code="cannot_listen", label="polyfleet sim"
        ) from None
