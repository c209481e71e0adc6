"""Both stores behind one face, so one suite runs over each (as NAPALM runs one over drivers)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polyfleet.controller.store.base import Store
from polyfleet.controller.store.postgres import PostgresStore
from polyfleet.controller.store.tinydb import TinyDBStore


@dataclass
class StoreBackend:
    """Where a store keeps its state: a data directory, or a PostgreSQL database."""

    name: str
    directory: Path
    url: str | None = None

    def new(self, **kwargs: Any) -> Store:
        """A store on this place (not yet open); keyword arguments go to the embedded one."""
        if self.url is not None:
            return PostgresStore(self.url)
        return TinyDBStore(self.directory, **kwargs)

    @contextlib.asynccontextmanager
    async def opened(self, **kwargs: Any) -> AsyncIterator[Store]:
        """An open store; on PostgreSQL it waits for a crashed predecessor's session to end."""
        store = self.new(**kwargs)
        if isinstance(store, PostgresStore):
            await asyncio.wait_for(store.open(wait=True), 30)
        else:
            await store.open()
        try:
            yield store
        finally:
            await store.close()

    def crash(self, store: Store) -> None:
        """Leave the store as a crash would: writers stopped, nothing flushed, lock released."""
        crash(store)

    def config_toml(self, **store_keys: object) -> str:
        """A controller.toml ``[store]`` table for this place (plus ``store_keys``)."""
        lines = ["[store]"]
        if self.url is not None:
            lines.append(f'url = "{self.url}"')
        for key, value in store_keys.items():
            lines.append(f"{key} = {value!r}")
        return "\n".join(lines) + "\n"

    @property
    def overrides(self) -> dict[str, Any]:
        """Config overrides for ``running_controller`` that select this store."""
        return {} if self.url is None else {"store_url": self.url}


def crash(store: Store) -> None:
    """Stop a store's writers and drop its lock without flushing, as ``kill -9`` would."""
    if isinstance(store, TinyDBStore):
        assert store._writer_task is not None and store._snapshot_task is not None
        store._writer_task.cancel()
        store._snapshot_task.cancel()
        store._release_lock()
    elif isinstance(store, PostgresStore):
        assert store._writer_task is not None and store._conn is not None
        store._writer_task.cancel()
        # The server ends the session (and releases its lock) as it does for a killed process.
        store._conn.terminate()
        store._conn = None
        store._opened = False
    else:
        raise TypeError(f"no crash for {type(store).__name__}")
