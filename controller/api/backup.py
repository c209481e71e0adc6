"""``GET /api/v1/backup``: a consistent copy of the whole store while it runs, as one file."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import IO

from aiohttp import web

from polyfleet.controller.http.spec import ADMINS, endpoint
from polyfleet.controller.keys import CORE
from polyfleet.controller.store.postgres import PostgresStore
from polyfleet.controller.store.tinydb import TinyDBStore
from polyfleet.controller.store.transfer import Collections, snapshot, write_backup_stream

CHUNK = 256 * 1024
MEDIA = "application/gzip"


@endpoint(
    summary="A consistent copy of every stored document (gzip JSON lines; restore reads it)",
    roles=ADMINS,
    response_media=MEDIA,
    tags=("operations",),
)
async def get_backup(request: web.Request) -> web.StreamResponse:
    store = request.app[CORE].store
    if not isinstance(store, TinyDBStore | PostgresStore):
        raise web.HTTPNotImplemented(reason="this store cannot be backed up")
    # One instant of the state (nothing else runs between the copies of the collections);
    # what it holds is on disk before it is sent.
    data = snapshot(store)
    await store.sync()
    source = "postgresql" if isinstance(store, PostgresStore) else "embedded"
    directory = request.app[CORE].config.data_dir
    spool: IO[bytes] = await asyncio.to_thread(_spool, directory)
    try:
        await asyncio.to_thread(_encode, spool, data, source)
        del data
        response = web.StreamResponse(
            headers={
                "Content-Type": MEDIA,
                "Content-Disposition": 'attachment; filename="polyfleet-backup.jsonl.gz"',
            }
        )
        await response.prepare(request)
        while chunk := await asyncio.to_thread(spool.read, CHUNK):
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        await asyncio.to_thread(spool.close)


def _spool(directory: Path) -> IO[bytes]:
    # Beside the store, not in /tmp: a backup may be larger than a memory-backed /tmp.
    return tempfile.TemporaryFile("w+b", dir=directory)


def _encode(spool: IO[bytes], data: Collections, source: str) -> None:
    write_backup_stream(spool, data, source=source)
    spool.flush()
    spool.seek(0)


def register(app: web.Application) -> None:
    app.router.add_get("/api/v1/backup", get_backup, allow_head=False)
