"""The PostgreSQL-backed ``Store``: state in memory, every change committed to PostgreSQL.

The same contract as the embedded store (``store/base.py``), on a database that admins
already run, back up and replicate:

- ``open`` reads the whole state into memory; reads never touch the database;
- ``apply`` changes memory at once and queues the new documents, already encoded (so a
  document with no JSON form is refused before anything changes); one writer commits all
  that is queued at that moment in one transaction (group commit), and a change counts as
  durable (a report is acknowledged) only once PostgreSQL has committed it;
- exactly one process writes. It holds a session-level advisory lock on the very connection
  it writes through, and every transaction first checks, on that session, that it still
  holds the lock and that the fencing term in ``polyfleet.leader`` is still the one it took.
  A controller that lost its session (network partition, database restart) commits nothing
  more: on reconnecting it takes the lock again only if nobody took over meanwhile, and is
  otherwise deposed (``StoreDeposed``), its unacknowledged changes dropped;
- the schema (``polyfleet.documents``, ``polyfleet.leader``, ``polyfleet.schema_version``)
  is created and migrated by the lock holder, in one transaction; a schema newer than this
  code knows is refused before anything is touched.

Connection trouble is not a failure: changes wait (unacknowledged) while the writer
reconnects with back-off, and go in once the database answers again.
This is the only module that imports asyncpg.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson

from polyfleet.controller.store.base import (
    Doc,
    StoreError,
    StoreLocked,
    StoreUnavailable,
)
from polyfleet.controller.store.journal import encode_json
from polyfleet.controller.store.memory import InMemoryCollections, StagedChange
from polyfleet.shared.retry import Backoff

log = logging.getLogger(__name__)

#: The advisory lock every controller of one database competes for: (class, id), class "poly".
LOCK_CLASS = 0x706F6C79
LOCK_ID = 1
#: One transaction of the writer carries at most about this many bytes of documents.
BATCH_BYTES = 8 * 1024 * 1024
DEFAULT_CONNECT_TIMEOUT_S = 10.0
#: A statement that takes longer counts as a lost connection (a network that went silent).
DEFAULT_STATEMENT_TIMEOUT_S = 30.0
#: An idle writer checks this often that it still holds the lock (and its connection works).
DEFAULT_HEARTBEAT_S = 2.0
#: How long ``close`` waits for queued changes to commit when the database does not answer.
DEFAULT_CLOSE_TIMEOUT_S = 30.0
#: Longest pause between reconnection attempts.
RECONNECT_MAX_S = 2.0
#: Reconnection attempts of the writer: soon at first (a blip), jittered, up to RECONNECT_MAX_S.
RECONNECT_BACKOFF = Backoff(first_s=0.1, max_s=RECONNECT_MAX_S, jitter=0.5)
#: A waiting controller asks for the lock in rounds of this length (checking its connection).
LOCK_WAIT_ROUND_S = 5.0
#: The server drops a silent client's session (and with it the lock) after about
#: idle + interval * count seconds, so that a standby can take over from a vanished one.
SERVER_SETTINGS = {
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
    # A commit deletes documents by key, joining its list of keys to the table. Planned as a
    # hash join, each commit read the whole table (a few hundred thousand documents) to
    # delete a few: the store's sessions look each key up in the primary key instead.
    "enable_hashjoin": "off",
    "enable_mergejoin": "off",
}

#: Schema migrations, in order: version N is ``MIGRATIONS[N - 1]``. Append, never edit.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # ``json`` keeps each document's text exactly (``jsonb`` would refuse \u0000 and
        # lone surrogates that the store accepts); ``position`` keeps insertion order.
        """CREATE TABLE polyfleet.documents (
            collection text NOT NULL,
            key text NOT NULL,
            doc json NOT NULL,
            position bigserial NOT NULL,
            PRIMARY KEY (collection, key)
        )""",
        """CREATE TABLE polyfleet.leader (
            id boolean PRIMARY KEY DEFAULT true CHECK (id),
            term bigint NOT NULL,
            holder text NOT NULL,
            url text,
            since timestamptz NOT NULL
        )""",
        "INSERT INTO polyfleet.leader (term, holder, url, since) VALUES (0, '', NULL, now())",
    ),
)

#: A batch's whole transaction, as one statement: fenced, then upserted and deleted (a key is
#: in one of the two lists at most). Fenced: this session holds the lock, under the term it
#: took. One round trip instead of five (BEGIN, fence, upsert, delete, COMMIT): under
#: ingestion each round trip waited for request handlers to let go of the event loop, so
#: round trips, not the database, set how fast batches committed. A statement outside a
#: transaction block is a transaction of its own: PostgreSQL answers it only once it has
#: committed, all of it or nothing (fenced off: nothing, and false). With no documents it is
#: the idle writer's heartbeat.
_COMMIT = """
    WITH fence AS (
        SELECT l.term = $1 AND EXISTS (
            SELECT 1 FROM pg_locks
            WHERE locktype = 'advisory' AND classid = $2::oid AND objid = $3::oid
              AND objsubid = 2 AND pid = pg_backend_pid() AND granted
        ) AS held
        FROM polyfleet.leader l
    ),
    upserted AS (
        INSERT INTO polyfleet.documents (collection, key, doc)
        SELECT * FROM unnest($4::text[], $5::text[], $6::json[])
        WHERE (SELECT held FROM fence)
        ON CONFLICT (collection, key) DO UPDATE SET doc = EXCLUDED.doc
    ),
    deleted AS (
        DELETE FROM polyfleet.documents d
        USING unnest($7::text[], $8::text[]) AS gone(collection, key)
        WHERE (SELECT held FROM fence) AND d.collection = gone.collection AND d.key = gone.key
    )
    SELECT held FROM fence
"""
_LEADER = """
    SELECT l.term, l.holder, l.url, l.since, l.holder_pid IS NOT NULL AS held
    FROM (
        SELECT leader.*, (
            SELECT pid FROM pg_locks
            WHERE locktype = 'advisory' AND classid = $1::oid AND objid = $2::oid
              AND objsubid = 2 AND granted
        ) AS holder_pid
        FROM polyfleet.leader
    ) l
"""
_LOCK_HOLDER = """
    SELECT pid FROM pg_locks
    WHERE locktype = 'advisory' AND classid = $1::oid AND objid = $2::oid AND objsubid = 2
      AND granted
"""

#: Called once when another controller took over the database.
DeposedObserver = Callable[["StoreDeposed"], None]


class StoreDeposed(StoreUnavailable):
    """Another controller took over the database: this one may not write again."""


class SchemaTooNew(StoreError):
    """The database's schema is newer than this polyfleet knows; nothing was changed."""


@dataclass(frozen=True, kw_only=True)
class Leader:
    """Who holds (or last held) a database: the fencing term and the advertised URL."""

    term: int
    holder: str
    url: str | None
    since: datetime
    #: Whether some session holds the lock right now.
    held: bool


def redact_url(url: str) -> str:
    """``url`` without its password, for logs and messages (several hosts allowed)."""
    parts = urlsplit(url)
    user, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in user:
        return url
    return urlunsplit(parts._replace(netloc=f"{user.split(':', 1)[0]}:***@{hosts}"))


def is_postgres_url(url: str) -> bool:
    return urlsplit(url).scheme in ("postgresql", "postgres")


def _as_bytes(value: bytes) -> bytes:
    return value


def default_holder() -> str:
    """How this process names itself in ``polyfleet.leader`` and ``pg_stat_activity``."""
    return f"{socket.gethostname()}:{os.getpid()}"


#: One ``apply``'s changes as queued: collection -> key -> JSON, and collection -> keys gone.
_Encoded = tuple[dict[str, dict[str, bytes]], dict[str, list[str]]]


class _Batch:
    """Queued changes taken together into one transaction; a later change of a key wins."""

    def __init__(self) -> None:
        self.last_seq = 0
        self.size = 0
        self.puts: dict[str, dict[str, bytes]] = {}
        self.deletes: dict[str, set[str]] = {}

    def add(self, seq: int, change: _Encoded) -> None:
        # Per collection, so that most of the work is done by dict and set methods: a batch
        # of ingestion holds tens of thousands of documents.
        self.last_seq = seq
        puts, deletes = change
        for collection, docs in puts.items():
            self.puts.setdefault(collection, {}).update(docs)
            self.deletes.get(collection, set()).difference_update(docs)
            self.size += sum(map(len, docs)) + sum(map(len, docs.values()))
        for collection, keys in deletes.items():
            kept = self.puts.get(collection, {})
            for key in keys:
                kept.pop(key, None)
            self.deletes.setdefault(collection, set()).update(keys)
            self.size += sum(map(len, keys))


class PostgresStore(InMemoryCollections[_Encoded]):
    """``Store`` over a PostgreSQL database; see the module docstring for the write path.

    Flush observers are called with ("commit", seconds) after each durable write.
    """

    def __init__(
        self,
        url: str,
        *,
        holder: str | None = None,
        advertise_url: str | None = None,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        statement_timeout_s: float = DEFAULT_STATEMENT_TIMEOUT_S,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        close_timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S,
        migrations: tuple[tuple[str, ...], ...] = MIGRATIONS,
    ) -> None:
        if not is_postgres_url(url):
            raise StoreError(f"{redact_url(url)}: a store URL starts with postgresql://")
        super().__init__()
        self.url = url
        self.shown_url = redact_url(url)
        self.holder = holder or default_holder()
        self.advertise_url = advertise_url
        self.connect_timeout_s = connect_timeout_s
        self.statement_timeout_s = statement_timeout_s
        self.heartbeat_s = heartbeat_s
        self.close_timeout_s = close_timeout_s
        self.migrations = migrations
        self.deposed_observers: list[DeposedObserver] = []
        self._conn: asyncpg.Connection | None = None
        self._backend_pid: int | None = None
        self._watch: asyncpg.Connection | None = None
        self._term = 0
        self._failed: BaseException | None = None
        self._closing = False
        self._opened = False
        self._connected = False
        self._writer_task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def term(self) -> int:
        """The fencing term this store writes under (0 before ``open``)."""
        return self._term

    @property
    def connected(self) -> bool:
        """Whether the writer's session is up (changes wait for it when it is not)."""
        return self._connected

    @property
    def pending(self) -> int:
        """Changes applied but not yet committed."""
        return self._applied_seq - self._durable_seq

    async def open(self, *, wait: bool = False) -> None:
        """Take the database (``wait``: until the holder lets go), migrate, load the state.

        Without ``wait`` a database held by another controller raises ``StoreLocked``.
        """
        while True:
            try:
                conn = await self._connect()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                if not wait:
                    raise StoreUnavailable(f"cannot reach {self.shown_url}: {exc}") from exc
                log.warning("store %s: cannot connect (%s); trying again", self.shown_url, exc)
                await asyncio.sleep(RECONNECT_MAX_S)  # waits-for: the database to answer
                continue
            try:
                await self._check_schema(conn)
                if not await self._take_lock(conn, wait=wait):
                    continue
                await self._migrate(conn)
                self._term = await conn.fetchval(
                    "UPDATE polyfleet.leader SET term = term + 1, holder = $1, url = $2, "
                    "since = now() RETURNING term",
                    self.holder,
                    self.advertise_url,
                )
                data = await self._load(conn)
            except (StoreError, asyncio.CancelledError, KeyboardInterrupt):
                await self._discard(conn)
                raise
            except Exception as exc:
                # A lost session, a server shutting down, a replica not yet promoted: a
                # controller waiting for the database tries again; a command says why.
                await self._discard(conn)
                if not wait:
                    raise StoreUnavailable(f"{self.shown_url}: {exc}") from exc
                log.warning(
                    "store %s: %s: %s; trying again", self.shown_url, type(exc).__name__, exc
                )
                await asyncio.sleep(RECONNECT_MAX_S)  # waits-for: the database to recover
                continue
            break
        self._conn = conn
        self._backend_pid = conn.get_server_pid()
        self._connected = True
        self._data = data
        self._opened = True
        self._closing = False
        self._writer_task = asyncio.create_task(self._write_loop(), name="store-postgres")
        log.info(
            "store %s: open as %s (term %d, %d documents)",
            self.shown_url,
            self.holder,
            self._term,
            sum(len(docs) for docs in data.values()),
        )

    async def close(self) -> None:
        """Commit what is queued (waiting up to ``close_timeout_s``) and let go of the lock."""
        if self._opened:
            if self._failed is None:
                try:
                    await asyncio.wait_for(self.sync(), self.close_timeout_s)
                except StoreUnavailable:
                    pass
                except TimeoutError:
                    log.error(
                        "store %s: %d changes not committed at close (never acknowledged)",
                        self.shown_url,
                        self.pending,
                    )
            self._closing = True
            self._wake.set()
            if self._writer_task is not None:
                self._writer_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._writer_task
                self._writer_task = None
            self._opened = False
        if self._conn is not None:
            # Closing the session releases the advisory lock with it.
            await self._discard(self._conn)
            self._conn = None
        self._connected = False
        if self._watch is not None:
            await self._discard(self._watch)
            self._watch = None

    async def _connect(self) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(
            self.url,
            timeout=self.connect_timeout_s,
            server_settings={
                **SERVER_SETTINGS,
                "application_name": f"polyfleet-controller {self.holder}"[:63],
            },
        )
        # Documents travel as the bytes of their JSON text, encoded and decoded by the store.
        await conn.set_type_codec(
            "json", schema="pg_catalog", encoder=_as_bytes, decoder=_as_bytes, format="binary"
        )
        return conn

    async def _discard(self, conn: asyncpg.Connection) -> None:
        try:
            await asyncio.wait_for(conn.close(), 5)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            conn.terminate()

    async def _check_schema(self, conn: asyncpg.Connection) -> None:
        version = await self._schema_version(conn)
        known = len(self.migrations)
        if version > known:
            raise SchemaTooNew(
                f"the polyfleet schema in {self.shown_url} is version {version}, newer than "
                f"this polyfleet knows ({known}): run the newer polyfleet (nothing was changed)"
            )

    async def _schema_version(self, conn: asyncpg.Connection) -> int:
        exists = await conn.fetchval(
            "SELECT to_regclass($1) IS NOT NULL", "polyfleet.schema_version"
        )
        if not exists:
            return 0
        version = await conn.fetchval("SELECT max(version) FROM polyfleet.schema_version")
        return int(version or 0)

    async def _take_lock(self, conn: asyncpg.Connection, *, wait: bool) -> bool:
        """Take the advisory lock; False when a round of waiting ended without it."""
        if not wait:
            if await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_CLASS, LOCK_ID):
                return True
            await self._discard(conn)
            raise StoreLocked(self.shown_url)
        try:
            # Granted the moment the holder's session ends; a round's end checks the connection.
            await conn.execute(f"SET lock_timeout = '{int(LOCK_WAIT_ROUND_S * 1000)}ms'")
            await conn.execute("SELECT pg_advisory_lock($1, $2)", LOCK_CLASS, LOCK_ID)
        except asyncpg.LockNotAvailableError:
            await self._discard(conn)
            return False
        await conn.execute("RESET lock_timeout")
        return True

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("CREATE SCHEMA IF NOT EXISTS polyfleet")
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS polyfleet.schema_version (
                    version integer PRIMARY KEY,
                    applied_at timestamptz NOT NULL DEFAULT now(),
                    applied_by text NOT NULL
                )"""
            )
            version = await self._schema_version(conn)
            if version > len(self.migrations):
                raise SchemaTooNew(
                    f"the polyfleet schema in {self.shown_url} is version {version}, newer "
                    f"than this polyfleet knows ({len(self.migrations)}): run the newer "
                    "polyfleet (nothing was changed)"
                )
            for number in range(version + 1, len(self.migrations) + 1):
                for statement in self.migrations[number - 1]:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO polyfleet.schema_version (version, applied_by) VALUES ($1, $2)",
                    number,
                    self.holder,
                )
                log.info("store %s: schema migrated to version %d", self.shown_url, number)

    async def _load(self, conn: asyncpg.Connection) -> dict[str, dict[str, Doc]]:
        data: dict[str, dict[str, Doc]] = {}
        rows = await conn.fetch(
            "SELECT collection, key, doc FROM polyfleet.documents ORDER BY position"
        )
        for collection, key, doc in rows:
            docs = data.get(collection)
            if docs is None:
                docs = data[collection] = {}
            docs[key] = decode_json(doc)
        return data

    # -- who holds the database ------------------------------------------------------------

    async def stop_watching(self) -> None:
        """Close the connection ``leader`` reads with (a standby's; once it no longer asks)."""
        if self._watch is not None:
            watch, self._watch = self._watch, None
            await self._discard(watch)

    async def leader(self) -> Leader | None:
        """Who holds the database now (None before any controller created the schema)."""
        if self._watch is None or self._watch.is_closed():
            self._watch = await self._connect()
        try:
            if await self._schema_version(self._watch) == 0:
                return None
            row = await self._watch.fetchrow(
                _LEADER, LOCK_CLASS, LOCK_ID, timeout=self.statement_timeout_s
            )
        except BaseException:
            watch, self._watch = self._watch, None
            watch.terminate()
            raise
        if row is None:
            return None
        return Leader(
            term=row["term"],
            holder=row["holder"],
            url=row["url"],
            since=row["since"],
            held=row["held"],
        )

    # -- writes ------------------------------------------------------------------------------

    def _refuse_if_unwritable(self) -> None:
        if self._failed is not None:
            if isinstance(self._failed, StoreUnavailable):
                raise type(self._failed)(str(self._failed))
            raise StoreUnavailable(f"store {self.shown_url} failed: {self._failed}")
        if not self._opened:
            raise StoreUnavailable(f"store {self.shown_url} is not open")

    def _key(self, key: object) -> str:
        return _check_key(key)

    def _keep(self, docs: Mapping[str, Doc], handover: bool) -> dict[str, Doc]:
        if handover:
            return {_check_key(k): d for k, d in docs.items()}
        return {_check_key(k): dict(d) for k, d in docs.items()}

    def _record(self, change: StagedChange) -> _Encoded:
        encoded = {
            collection: {key: encode_json(doc) for key, doc in docs.items()}
            for collection, docs in change.docs.items()
        }
        return encoded, change.deletes

    async def wait_durable(self, seq: int) -> None:
        while self._durable_seq < seq:
            self._refuse_if_unwritable()
            await self._progress.wait()

    async def checkpoint(self) -> None:
        """PostgreSQL checkpoints by itself; here, everything applied is made durable."""
        await self.sync()

    # -- the writer --------------------------------------------------------------------------

    def _take_batch(self) -> _Batch:
        batch = _Batch()
        taken = 0
        for seq, change in self._pending:
            batch.add(seq, change)
            taken += 1
            if batch.size >= BATCH_BYTES:
                break
        del self._pending[:taken]
        return batch

    async def _write_loop(self) -> None:
        batch: _Batch | None = None
        troubled = False
        try:
            while True:
                if batch is None:
                    if not self._pending:
                        if self._closing:
                            return
                        try:
                            await asyncio.wait_for(self._wake.wait(), self.heartbeat_s)
                            self._wake.clear()
                            continue
                        except TimeoutError:
                            pass
                    else:
                        batch = self._take_batch()
                started = time.perf_counter()
                try:
                    if batch is None:
                        await self._heartbeat()
                    else:
                        await self._commit(batch)
                except (StoreDeposed, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    # Whatever broke the session (a restart, a network, a protocol state),
                    # a new one is fenced again before anything is committed on it.
                    if not troubled:
                        log.warning(
                            "store %s: write failed, reconnecting (changes wait): %s: %s",
                            self.shown_url,
                            type(exc).__name__,
                            exc,
                        )
                    troubled = True
                    self._connected = False
                    await self._reconnect()
                    continue
                if troubled:
                    log.info("store %s: writing again", self.shown_url)
                    troubled = False
                if batch is not None:
                    self._observe("commit", time.perf_counter() - started)
                    self._durable_seq = batch.last_seq
                    batch = None
                    self._notify()
        except StoreDeposed as exc:
            self._depose(exc)

    async def _heartbeat(self) -> None:
        await self._commit(_Batch())

    async def _commit(self, batch: _Batch) -> None:
        conn = self._writer_conn()
        collections: list[str] = []
        keys: list[str] = []
        docs: list[bytes] = []
        for collection, found in batch.puts.items():
            collections += [collection] * len(found)
            keys += found
            docs += found.values()
        gone_collections: list[str] = []
        gone_keys: list[str] = []
        for collection, gone in batch.deletes.items():
            gone_collections += [collection] * len(gone)
            gone_keys += gone
        held = await conn.fetchval(
            _COMMIT,
            self._term,
            LOCK_CLASS,
            LOCK_ID,
            collections,
            keys,
            docs,
            gone_collections,
            gone_keys,
            timeout=self.statement_timeout_s,
        )
        if not held:
            raise StoreDeposed(f"{self.shown_url}: another controller took over")

    def _writer_conn(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            raise asyncpg.InterfaceError("the writer's connection is closed")
        return self._conn

    async def _reconnect(self) -> None:
        """A new session holding the lock under the same term, or StoreDeposed."""
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
        attempt = 0
        while True:
            attempt += 1
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._connect()
                if not await self._relock(conn):
                    raise StoreDeposed(f"{self.shown_url}: another controller holds the database")
                term = await conn.fetchval("SELECT term FROM polyfleet.leader")
                if term != self._term:
                    raise StoreDeposed(
                        f"{self.shown_url}: another controller took over (term {term})"
                    )
            except StoreDeposed:
                if conn is not None:
                    await self._discard(conn)
                raise
            except (asyncio.CancelledError, KeyboardInterrupt):
                if conn is not None:
                    conn.terminate()
                raise
            except Exception as exc:
                if conn is not None:
                    conn.terminate()
                log.debug("store %s: reconnect attempt %d: %s", self.shown_url, attempt, exc)
                delay = RECONNECT_BACKOFF.delay(attempt)
                await asyncio.sleep(delay)  # waits-for: the next reconnection attempt
                continue
            self._conn = conn
            self._backend_pid = conn.get_server_pid()
            self._connected = True
            return

    async def _relock(self, conn: asyncpg.Connection) -> bool:
        """Take the lock on a new session; our own lost session may still hold it a while."""
        for _ in range(2):
            if await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_CLASS, LOCK_ID):
                return True
            holder = await conn.fetchval(_LOCK_HOLDER, LOCK_CLASS, LOCK_ID)
            if holder is None or holder != self._backend_pid:
                return False
            # The server has not noticed yet that our old session is gone: end it ourselves.
            await conn.fetchval("SELECT pg_terminate_backend($1, 5000)", holder)
        return False

    def _depose(self, exc: StoreDeposed) -> None:
        log.error(
            "store %s: deposed, %d unacknowledged changes dropped: %s",
            self.shown_url,
            self.pending,
            exc,
        )
        self._failed = exc
        self._connected = False
        self._pending.clear()
        self._notify()
        for observer in self.deposed_observers:
            observer(exc)


def decode_json(text: bytes) -> Any:
    """orjson's parser, and the standard one for what orjson refuses (an escaped surrogate)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _check_key(key: object) -> str:
    text = str(key)
    if "\x00" in text:
        raise ValueError(f"document key {text!r} holds a NUL character")
    return text


async def read_all(url: str) -> dict[str, dict[str, Doc]]:
    """Every document of a database, as one consistent snapshot (no lock needed)."""
    store = PostgresStore(url)
    conn = await store._connect()
    try:
        await store._check_schema(conn)
        if await store._schema_version(conn) == 0:
            return {}
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            return await store._load(conn)
    finally:
        await store._discard(conn)
