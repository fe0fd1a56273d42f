"""The PostgreSQL store only: its schema versions, its connection errors, its URL's password."""

from __future__ import annotations

import psycopg
import pytest

from servletkit.store import Batch, ProcessedTransaction
from servletkit.store.postgres import MIGRATIONS, PostgresStore, redacted


async def test_the_schema_version_is_recorded_once(postgres_url):
    """A new database records the newest schema version; reopening applies nothing again."""
    store = PostgresStore(postgres_url)
    await store.commit(Batch(), ProcessedTransaction("1", "d"))
    await store.close()
    again = PostgresStore(postgres_url)
    assert await again.processed_digest("1") == "d"
    await again.close()
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [
            (len(MIGRATIONS),)]


async def test_a_newer_schema_is_refused(postgres_url):
    """A database written by a newer servletkit is not used (its schema is unknown here)."""
    with psycopg.connect(postgres_url) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (99)")
    with pytest.raises(RuntimeError, match="version 99, newer"):
        await PostgresStore(postgres_url).open()


async def test_an_unreachable_server_says_why_without_the_password(postgres_server):
    """Opening a store whose server does not answer fails with the driver's reason; the
    store's repr and closed-store errors never show the password."""
    from tests.store.postgres_server import free_port

    url = f"postgresql://servletkit:hunter2@127.0.0.1:{free_port()}/x?connect_timeout=2"
    store = PostgresStore(url)
    with pytest.raises(psycopg.OperationalError) as caught:
        await store.open()
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(store)
    await store.close()
    with pytest.raises(Exception, match="is closed") as closed:
        await store.get("p", "k")
    assert "hunter2" not in str(closed.value)


def test_redacted_hides_only_the_password():
    assert redacted("postgresql://u:p%40ss@h:5432/db?sslmode=require") == (
        "postgresql://u:***@h:5432/db?sslmode=require")
    assert redacted("postgresql://u@h/db") == "postgresql://u@h/db"
