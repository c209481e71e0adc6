"""``polyfleet controller store copy``, ``backup`` and ``restore``: whole stores, checked.

- ``store copy --from PLACE --to PLACE``: a data directory or a ``postgresql://`` URL each
  way; the target must be empty and not in use; afterwards every document is compared.
- ``backup --to FILE``: a consistent copy of the configured store in one file, also while
  the controller runs (an embedded store through its control socket, PostgreSQL from one
  snapshot of the database).
- ``restore --from FILE``: a backup into the configured store, which must be empty and not
  in use; checked like a copy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from polyfleet.controller.app import read_runtime
from polyfleet.controller.cli.reach import CommandError
from polyfleet.controller.cli.reach import config_of as _config
from polyfleet.controller.config import ControllerConfig
from polyfleet.controller.store.base import StoreError
from polyfleet.controller.store.transfer import (
    STORE_SUBDIR,
    Collections,
    Mismatch,
    Place,
    TransferError,
    count_documents,
    read_backup,
    read_place,
    verify_place,
    write_backup,
    write_place,
)
from polyfleet.shared.durable import StagedFile

#: How many mismatching documents a failed check lists.
SHOWN_MISMATCHES = 20
BACKUP_TIMEOUT_S = 3600


class _Progress:
    """``written N/M documents`` on a terminal (standard error), nothing otherwise."""

    def __init__(self, verb: str) -> None:
        self._verb = verb
        self._shown = sys.stderr.isatty()
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self._shown or (done < total and now - self._last < 0.2):
            return
        self._last = now
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r{self._verb} {done}/{total} documents{end}")
        sys.stderr.flush()


def _place_of(config: ControllerConfig) -> Place:
    if config.store_url is not None:
        return Place(config.store_url)
    return Place(str(config.data_dir))


def _checked(target: Place, mismatches: list[Mismatch]) -> None:
    if mismatches:
        shown = [m.to_json() for m in mismatches[:SHOWN_MISMATCHES]]
        raise CommandError(
            f"{len(mismatches)} documents in {target} differ from the source "
            f"(first: {shown[0]['collection']}/{shown[0]['key']} {shown[0]['problem']}); "
            "the target is not a faithful copy: empty it before trying again",
            code="copy_mismatch",
            problems=[
                {"message": f"{m['collection']}/{m['key']}: {m['problem']}", **m} for m in shown
            ],
        )


def _report(args: argparse.Namespace, document: dict[str, Any], line: str) -> None:
    if args.json:
        print(json.dumps(document, indent=2, sort_keys=True))
    else:
        print(line)


async def _copy(source: Place, target: Place) -> Collections:
    data = await read_place(source)
    await write_place(target, data, _Progress("copied"))
    _checked(target, await verify_place(target, data))
    return data


def cmd_store_copy(args: argparse.Namespace) -> int:
    source, target = Place(args.source), Place(args.target)
    if source.text == target.text:
        raise CommandError("--from and --to name the same store", code="bad_input")
    try:
        data = asyncio.run(_copy(source, target))
    except StoreError as exc:
        raise CommandError(str(exc), code="store_error") from None
    counts = count_documents(data)
    total = sum(counts.values())
    _report(
        args,
        {
            "from": str(source),
            "to": str(target),
            "documents": total,
            "collections": counts,
            "verified": True,
        },
        f"copied {total} documents in {len(counts)} collections from {source} to {target}; "
        "every document checked",
    )
    return 0


async def _backup_via_server(socket: str, path: Path) -> None:
    """Stream ``GET /api/v1/backup`` from the running server into ``path`` (checked first)."""
    connector = aiohttp.UnixConnector(path=socket)
    timeout = aiohttp.ClientTimeout(total=BACKUP_TIMEOUT_S)
    # Only its owner may read it: a backup holds every token hash and setting.
    staged = await asyncio.to_thread(StagedFile, path.parent, name=path.name)
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as http,
            http.get("http://controller/api/v1/backup") as response,
        ):
            if response.status != 200:
                body = await response.json(content_type=None)
                error = body.get("error", {}) if isinstance(body, dict) else {}
                raise CommandError(
                    f"the controller refused the backup: {error.get('message') or response.status}",
                    code=str(error.get("code") or "refused"),
                )
            async for chunk in response.content.iter_chunked(256 * 1024):
                await asyncio.to_thread(staged.write, chunk)
            await asyncio.to_thread(staged.finish)
        # A file cut short on the way is refused here, before it replaces anything.
        await asyncio.to_thread(read_backup, staged.path)
        await asyncio.to_thread(staged.commit, path)
    finally:
        await asyncio.to_thread(staged.discard)


async def _backup(config: ControllerConfig, path: Path) -> tuple[str, dict[str, Any]]:
    place = _place_of(config)
    if place.url is None:
        runtime = await asyncio.to_thread(read_runtime, config.data_dir)
        socket = runtime.get("control_socket") if runtime else None
        if socket:
            try:
                await _backup_via_server(socket, path)
            except aiohttp.ClientConnectionError:
                pass  # no server answers after all: read the store itself
            else:
                header, _ = await asyncio.to_thread(read_backup, path)
                return "the running controller", header
    data = await read_place(place)
    await asyncio.to_thread(write_backup, path, data, source=str(place))
    header, _ = await asyncio.to_thread(read_backup, path)
    return str(place), header


def cmd_backup(args: argparse.Namespace) -> int:
    config = _config(args)
    path = Path(args.to)
    if path.is_dir():
        raise CommandError(f"{path} is a directory: name the backup file", code="bad_input")
    try:
        source, header = asyncio.run(_backup(config, path))
    except StoreError as exc:
        raise CommandError(str(exc), code="store_error") from None
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc}", code="store_error") from None
    counts = header["collections"]
    total = sum(counts.values())
    _report(
        args,
        {
            "file": str(path),
            "documents": total,
            "collections": counts,
            "created_at": header["created_at"],
        },
        f"backup of {source} written to {path}: {total} documents in {len(counts)} collections",
    )
    return 0


async def _restore(path: Path, target: Place) -> dict[str, Any]:
    header, data = await asyncio.to_thread(read_backup, path)
    await write_place(target, data, _Progress("restored"))
    _checked(target, await verify_place(target, data))
    return header


def cmd_restore(args: argparse.Namespace) -> int:
    config = _config(args)
    target = _place_of(config)
    path = Path(args.source)
    if not path.is_file():
        raise CommandError(f"{path}: no such backup file", code="file_not_found", file=path)
    try:
        header = asyncio.run(_restore(path, target))
    except TransferError as exc:
        raise CommandError(str(exc), code="store_error") from None
    except StoreError as exc:
        raise CommandError(str(exc), code="store_error") from None
    counts = header["collections"]
    total = sum(counts.values())
    _report(
        args,
        {
            "file": str(path),
            "to": str(target),
            "documents": total,
            "collections": counts,
            "created_at": header["created_at"],
            "verified": True,
        },
        f"restored {total} documents from {path} (taken {header['created_at']}) into "
        f"{target}; every document checked",
    )
    return 0


def _store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="controller.toml (its [store] names the store)")
    parser.add_argument(
        "--data-dir", help=f"data directory of the embedded store (in its {STORE_SUBDIR}/)"
    )
    parser.add_argument("--store-url", help="a PostgreSQL store, postgresql://USER@HOST/DB")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def register(commands: argparse._SubParsersAction[Any]) -> None:
    store = commands.add_parser("store", help="copy a whole store between places").add_subparsers(
        dest="store_command", metavar="ACTION", required=True
    )
    copy = store.add_parser(
        "copy",
        help="copy every document into an empty store, checked document by document",
        description="PLACE is a data directory (the embedded store) or a postgresql:// URL.",
    )
    copy.add_argument("--from", dest="source", required=True, metavar="PLACE")
    copy.add_argument("--to", dest="target", required=True, metavar="PLACE")
    copy.add_argument("--json", action="store_true", help="machine-readable output")
    copy.set_defaults(func=cmd_store_copy)

    backup = commands.add_parser(
        "backup", help="a consistent copy of the store in one file (also while it runs)"
    )
    backup.add_argument("--to", required=True, metavar="FILE", help="the backup file to write")
    _store_flags(backup)
    backup.set_defaults(func=cmd_backup)

    restore = commands.add_parser(
        "restore", help="a backup file into an empty store, checked document by document"
    )
    restore.add_argument("--from", dest="source", required=True, metavar="FILE")
    _store_flags(restore)
    restore.set_defaults(func=cmd_restore)
