"""Fixtures for every test folder: one PostgreSQL server per test session (per xdist worker)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from polyfleet.controller.store.local_postgres import LocalPostgres


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """A PostgreSQL server on loopback, started on first use and stopped at the session's end."""
    server = LocalPostgres.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: LocalPostgres) -> str:
    """The URL of a new, empty database of its own on the session's server."""
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:16]}")
