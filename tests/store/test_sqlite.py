"""The embedded store: bounded transaction ids, atomic commits, the audit log, closing."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest

from servletkit.store import (
    AuditRecord,
    Batch,
    PluginStore,
    ProcessedTransaction,
    SqliteStore,
    StoreClosedError,
    unit_of_work,
)


def processed(n: int | str, digest: str = "d") -> ProcessedTransaction:
    return ProcessedTransaction(str(n), digest)


class TestProcessedTransactions:
    async def test_pruned_to_the_window(self, store):
        """Only about the last transactions_kept transactions are remembered."""
        for n in range(35):
            await store.commit(Batch(), processed(n))
        assert await store.processed_digest("34") == "d"
        assert await store.processed_digest("0") is None
        kept = [str(n) for n in range(35) if await store.processed_digest(str(n)) is not None]
        assert 10 <= len(kept) < 12  # pruned in steps of a tenth of the window
        assert kept == [str(n) for n in range(35 - len(kept), 35)]
        on_disk = store._conn.execute("SELECT count(*) FROM transactions").fetchone()[0]
        assert on_disk == len(kept)

    async def test_reopened_store_knows_the_window(self, store, tmp_path):
        """A reopened store knows the newest transactions_kept transactions and their digests."""
        for n in range(15):
            await store.commit(Batch(), processed(n, f"d{n}"))
        await store.close()
        reopened = SqliteStore(tmp_path / "s.db", transactions_kept=10)
        assert [await reopened.processed_digest(str(n)) for n in range(15)] == (
            [None] * 5 + [f"d{n}" for n in range(5, 15)])
        await reopened.close()

    async def test_a_reused_id_replaces_the_record_and_counts_as_newest(self, store):
        """After a counter reset, the id's new digest is kept and pruning keeps it longest."""
        for n in range(1, 11):
            await store.commit(Batch(), processed(n, "before"))
        await store.commit(Batch(), processed(1, "after"))  # the homeserver counts from 1 again
        assert await store.processed_digest("1") == "after"
        await store.commit(Batch(), processed(11, "before"))
        assert await store.processed_digest("1") == "after"  # the newest, not pruned first
        assert await store.processed_digest("2") is None

    async def test_a_file_without_digests_is_upgraded(self, tmp_path):
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

    async def test_commit_is_atomic(self, store):
        """If the commit fails, neither the id nor the writes are recorded."""
        plugin = PluginStore(store, "p")
        batch = Batch()
        with unit_of_work(batch):
            await plugin.put("k", "v")
        batch.audit.append(AuditRecord("p", "on_send_event", "veto", detail=object()))  # unbindable
        with pytest.raises(Exception, match="type"):
            await store.commit(batch, processed("t1"))
        assert await store.processed_digest("t1") is None
        assert await plugin.get("k") is None


class TestAuditBound:
    async def test_audit_log_keeps_the_newest_records(self, tmp_path):
        """The audit log is pruned to about the newest audit_kept records, oldest first out."""
        store = SqliteStore(tmp_path / "a.db", audit_kept=20)
        for n in range(75):
            await store.commit(Batch(audit=[AuditRecord("p", "on_send_event", "veto", f"$e{n}")]))
        count = store._conn.execute("SELECT count(*) FROM audit").fetchone()[0]
        assert 20 <= count < 22  # pruned in steps of a tenth of the bound
        newest = await store.audit_log(limit=count)
        assert [r.event_id for r in newest] == [f"$e{n}" for n in range(75 - count, 75)]
        await store.close()

    async def test_a_restart_prunes_what_a_larger_bound_left(self, tmp_path):
        """Lowering audit_kept takes effect at the first commit after the restart."""
        store = SqliteStore(tmp_path / "a.db", audit_kept=1000)
        await store.commit(Batch(audit=[AuditRecord("p", "h", "veto", f"$e{n}")
                                        for n in range(50)]))
        await store.close()
        smaller = SqliteStore(tmp_path / "a.db", audit_kept=10)
        await smaller.commit(Batch(audit=[AuditRecord("p", "h", "veto", "$last")]))
        assert smaller._conn.execute("SELECT count(*) FROM audit").fetchone()[0] == 10
        await smaller.close()


async def test_a_closed_store_is_not_reopened(tmp_path):
    """A plugin task that outlives the container gets an error, not a new connection."""
    store = SqliteStore(tmp_path / "c.db")
    await store.commit(Batch(), processed("t1"))
    await store.close()
    with pytest.raises(StoreClosedError, match="is closed"):
        await PluginStore(store, "p").put("k", "v")
    with pytest.raises(StoreClosedError):
        await store.processed_digest("t1")


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
