"""The embedded store only: its file's schema versions and upgrades, and private files.

What every backend does is in test_contract.py."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import time

import pytest

from servletkit.store import Batch, ProcessedTransaction, SqliteStore
from servletkit.store.sqlite import MIGRATIONS, StoreBusyError
from tests.store.locking import locked


def processed(n: int | str, digest: str = "d") -> ProcessedTransaction:
    return ProcessedTransaction(str(n), digest)


async def test_a_file_without_digests_is_upgraded(tmp_path):
    """A store written by a version that kept only ids opens; those ids have digest ''."""
    db = sqlite3.connect(tmp_path / "old.db")
    db.execute("CREATE TABLE transactions (txn_id TEXT PRIMARY KEY, at REAL NOT NULL)")
    db.execute("INSERT INTO transactions VALUES ('7', 0)")
    db.commit()
    db.close()
    store = SqliteStore(tmp_path / "old.db")
    assert await store.processed_digest("7") == ""
    await store.commit(Batch(), processed(8, "new"))
    assert await store.processed_digest("8") == "new"
    await store.close()


async def test_files_are_private(tmp_path):
    """The database, its -wal and its -shm are created readable by their owner only (they
    hold plugin data and the audit log), whatever the umask lets others read."""
    old = os.umask(0o022)
    try:
        store = SqliteStore(tmp_path / "private" / "s.db")
        await store.commit(Batch(writes={("p", "k"): "\"v\""}), processed(1))
        names = ["s.db", "s.db-wal", "s.db-shm"]
        modes = {name: stat.S_IMODE((tmp_path / "private" / name).stat().st_mode)
                 for name in names}
        await store.close()
    finally:
        os.umask(old)
    assert modes == dict.fromkeys(names, 0o600)


async def test_the_schema_version_is_recorded(tmp_path):
    """A new file records the newest schema version; reopening applies nothing again."""
    store = SqliteStore(tmp_path / "v.db")
    await store.commit(Batch(), processed(1))
    await store.close()
    again = SqliteStore(tmp_path / "v.db")
    assert await again.processed_digest("1") == "d"
    assert again._conn.execute("SELECT version FROM schema_version").fetchall() == [
        (len(MIGRATIONS),)]
    await again.close()


async def test_a_newer_schema_is_refused(tmp_path):
    """A file written by a newer servletkit is not opened (its schema is unknown here)."""
    db = sqlite3.connect(tmp_path / "new.db")
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (99)")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="version 99, newer"):
        await SqliteStore(tmp_path / "new.db").open()


async def test_a_locked_file_is_waited_for_off_the_event_loop(tmp_path):
    """While another process holds the write lock, a commit waits in the event loop's
    sleeps, not in SQLite's busy handler: other tasks run meanwhile; after
    ``busy_timeout_s`` it raises StoreBusyError and nothing of it is kept."""
    store = SqliteStore(tmp_path / "s.db", busy_timeout_s=0.5)
    await store.open()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    running = asyncio.create_task(ticker())
    try:
        with locked(tmp_path / "s.db"):
            started = time.monotonic()
            with pytest.raises(StoreBusyError, match="stayed locked by another process"):
                await store.commit(Batch(writes={("p", "k"): "1"}), processed(1))
            took = time.monotonic() - started
            assert await store.get("p", "k") is None  # reads go on while it is locked
        assert 0.5 <= took < 5, took
        assert ticks >= 10, ticks  # the loop turned while the commit waited
        await store.commit(Batch(writes={("p", "k"): "1"}), processed(1))
        assert await store.get("p", "k") == "1"
    finally:
        running.cancel()
        await store.close()
