"""What only the PostgreSQL store has: its schema and migrations, fencing, lost connections."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest

from polyfleet.controller.store.base import StoreLocked
from polyfleet.controller.store.postgres import (
    _COMMIT,
    LOCK_CLASS,
    LOCK_ID,
    MIGRATIONS,
    PostgresStore,
    SchemaTooNew,
    StoreDeposed,
    read_all,
    redact_url,
)


@contextlib.asynccontextmanager
async def observer(url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection of the test's own, to look at and disturb the database."""
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def end_session(url: str, store: PostgresStore) -> None:
    """End the store's database session from outside, as a network partition would."""
    assert store._backend_pid is not None
    async with observer(url) as conn:
        assert await conn.fetchval("SELECT pg_terminate_backend($1, 5000)", store._backend_pid)


async def one_site_written(url: str) -> PostgresStore:
    """A store opened at ``url`` (creating its schema), site krk written, closed again."""
    store = PostgresStore(url)
    await store.open()
    await store.put_many("sites", {"krk": {"name": "Kraków"}})
    await store.close()
    return store


async def test_schema_is_created_with_its_version_recorded(postgres_url: str) -> None:
    """A first open creates the schema in the polyfleet namespace and records its version."""
    store = await one_site_written(postgres_url)
    async with observer(postgres_url) as conn:
        versions = await conn.fetch("SELECT version, applied_by FROM polyfleet.schema_version")
        assert [row["version"] for row in versions] == list(range(1, len(MIGRATIONS) + 1))
        assert versions[0]["applied_by"] == store.holder
        row = await conn.fetchrow("SELECT collection, key, doc::text FROM polyfleet.documents")
        assert tuple(row) == ("sites", "krk", '{"name":"Kraków"}')


async def test_newer_schema_is_refused_before_anything_changes(postgres_url: str) -> None:
    """A schema newer than this code knows stops the open with both versions named."""
    await one_site_written(postgres_url)
    async with observer(postgres_url) as conn:
        await conn.execute(
            "INSERT INTO polyfleet.schema_version (version, applied_by) VALUES (99, 'newer')"
        )
    with pytest.raises(SchemaTooNew, match=r"version 99, newer than this polyfleet knows \(1\)"):
        await PostgresStore(postgres_url).open()
    with pytest.raises(SchemaTooNew):
        await PostgresStore(postgres_url).open(wait=True)
    async with observer(postgres_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM polyfleet.documents") == 1
        # Refused before the lock was even taken: the fencing term is untouched.
        assert await conn.fetchval("SELECT term FROM polyfleet.leader") == 1


async def test_migrations_run_once_in_order_and_older_code_is_refused(postgres_url: str) -> None:
    """A store with one more migration applies just that one, once; older code then refuses."""
    async with observer(postgres_url):
        pass
    first = PostgresStore(postgres_url)
    await first.open()
    await first.put_many("things", {"a": {"n": 1}})
    await first.close()
    upgraded = (*MIGRATIONS, ("CREATE TABLE polyfleet.upgrade_note (note text)",))
    for _ in range(2):
        store = PostgresStore(postgres_url, migrations=upgraded)
        await store.open()
        assert store.get("things", "a") == {"n": 1}
        await store.close()
    async with observer(postgres_url) as conn:
        versions = await conn.fetch("SELECT version FROM polyfleet.schema_version ORDER BY 1")
        assert [row["version"] for row in versions] == [1, 2]
        assert await conn.fetchval("SELECT to_regclass('polyfleet.upgrade_note') IS NOT NULL")
    with pytest.raises(SchemaTooNew, match="version 2"):
        await PostgresStore(postgres_url).open()


async def test_lost_session_changes_wait_and_commit_under_the_same_term(postgres_url: str) -> None:
    """When its session ends and nobody took over, the store reconnects and commits."""
    store = PostgresStore(postgres_url, heartbeat_s=0.1)
    await store.open()
    try:
        term = store.term
        await end_session(postgres_url, store)
        await store.put_many("things", {"after": {"n": 1}})
        assert store.term == term and store.connected
        assert (await read_all(postgres_url))["things"] == {"after": {"n": 1}}
    finally:
        await store.close()


async def test_deposed_store_refuses_its_next_write(postgres_url: str) -> None:
    """A store whose session ended while another took over commits not one more row."""
    first = PostgresStore(postgres_url, holder="first", heartbeat_s=3600)
    await first.open()
    await first.put_many("things", {"before": {"n": 1}})
    second = PostgresStore(postgres_url, holder="second")
    taking_over = asyncio.create_task(second.open(wait=True))
    try:
        with pytest.raises(StoreLocked):
            await PostgresStore(postgres_url).open()
        await end_session(postgres_url, first)
        await asyncio.wait_for(taking_over, 30)
        assert second.term == first.term + 1
        deposed: list[StoreDeposed] = []
        first.deposed_observers.append(deposed.append)
        seq = first.apply({"things": {"late": {"n": 2}}})
        with pytest.raises(StoreDeposed):
            await asyncio.wait_for(first.wait_durable(seq), 30)
        assert len(deposed) == 1
        with pytest.raises(StoreDeposed):
            first.apply({"things": {"later": {"n": 3}}})
        await second.put_many("things", {"second": {"n": 4}})
        assert (await read_all(postgres_url))["things"] == {
            "before": {"n": 1},
            "second": {"n": 4},
        }
    finally:
        taking_over.cancel()
        await first.close()
        await second.close()


async def test_deposed_while_holding_the_lock_again_is_caught_by_the_term(
    postgres_url: str,
) -> None:
    """A store that gets the lock back after another controller held it is still fenced off."""
    first = PostgresStore(postgres_url, holder="first", heartbeat_s=3600)
    await first.open()
    await end_session(postgres_url, first)
    # Another controller comes and goes while the first one is away.
    second = PostgresStore(postgres_url, holder="second")
    await asyncio.wait_for(second.open(wait=True), 30)
    await second.put_many("things", {"second": {"n": 1}})
    await second.close()
    try:
        with pytest.raises(StoreDeposed, match="took over"):
            await asyncio.wait_for(first.put_many("things", {"first": {"n": 2}}), 30)
        assert (await read_all(postgres_url))["things"] == {"second": {"n": 1}}
    finally:
        await first.close()


async def test_a_commit_finds_what_it_deletes_by_key(postgres_url: str) -> None:
    """A commit deleting many documents looks each up by key, never reading the whole table."""
    store = PostgresStore(postgres_url)
    await store.open()
    keys = [f"agent/{n}" for n in range(5000)]
    await store.put_many("reports", {key: {"n": n} for n, key in enumerate(keys)})
    conn = await store._connect()  # a session set up as the store's own
    try:
        await conn.execute("ANALYZE polyfleet.documents")
        rows = await conn.fetch(
            f"EXPLAIN {_COMMIT}",
            store.term,
            LOCK_CLASS,
            LOCK_ID,
            [],
            [],
            [],
            ["reports"] * 2000,
            keys[:2000],
        )
    finally:
        await conn.close()
        await store.close()
    plan = "\n".join(row[0] for row in rows)
    assert "Index Scan using documents_pkey on documents" in plan
    assert "Seq Scan on documents" not in plan


def test_passwords_never_appear_in_shown_urls() -> None:
    """Store URLs are shown without their password, in messages and logs."""
    assert (
        redact_url("postgresql://polyfleet:s3cret@db.example.com:5433/fleet?sslmode=require")
        == "postgresql://polyfleet:***@db.example.com:5433/fleet?sslmode=require"
    )
    assert redact_url("postgresql://db.example.com/fleet") == "postgresql://db.example.com/fleet"
    store = PostgresStore("postgresql://polyfleet:s3cret@[::1]:5432/fleet")
    assert "s3cret" not in store.shown_url and "[::1]:5432" in store.shown_url


async def test_unreachable_database_is_a_clear_error(unused_tcp_port: int) -> None:
    """Opening a store whose server does not answer names the URL, without its password."""
    store = PostgresStore(
        f"postgresql://polyfleet:s3cret@127.0.0.1:{unused_tcp_port}/fleet", connect_timeout_s=5
    )
    with pytest.raises(Exception, match=r"cannot reach postgresql://polyfleet:\*\*\*@") as caught:
        await store.open()
    assert "s3cret" not in str(caught.value)
