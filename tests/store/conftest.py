"""A fresh store per test, on each backend: the SQLite file and a real PostgreSQL.

The PostgreSQL server is started once per session (:mod:`tests.store.postgres_server`);
each test gets a database of its own. Without PostgreSQL installed, the postgres
cases are skipped, saying so.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from servletkit.store import SqliteStore, Store
from tests.store.postgres_server import PostgresServer, postgres_bin

_databases = itertools.count()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; "
                    "apt-get install postgresql, or run .ci/run)")
    pytest.importorskip("psycopg", reason="psycopg is not installed (scripts/bootstrap)")
    server = PostgresServer(bin_dir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty database on the session's server."""
    import psycopg

    name = f"test_{next(_databases)}"
    with psycopg.connect(postgres_server.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    yield postgres_server.url(name)
    with psycopg.connect(postgres_server.url(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)".encode())


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Any]:
    """Builds (unopened) stores on this test's backend, all on one file or database."""
    if request.param == "sqlite":
        return lambda **settings: SqliteStore(tmp_path / "s.db", **settings)
    from servletkit.store.postgres import PostgresStore

    url = request.getfixturevalue("postgres_url")
    return lambda **settings: PostgresStore(url, **settings)


@pytest.fixture
async def store(make_store: Callable[..., Store]) -> AsyncIterator[Store]:
    store = make_store(transactions_kept=10)
    await store.open()
    yield store
    await store.close()


async def rows(store: Any, table: str) -> int:
    """How many rows ``table`` of ``store`` holds, whichever the backend."""
    return int(await store.count(table))
