"""The embedded store: bounded transaction ids, units of work, plugin data, the audit log."""

from __future__ import annotations

import pytest

from servletkit.store.sqlite import (
    AuditRecord,
    Batch,
    PluginStore,
    ProcessedTransaction,
    SqliteStore,
    current_batch,
    record_decision,
    unit_of_work,
)


@pytest.fixture
def store(tmp_path):
    store = SqliteStore(tmp_path / "s.db", transactions_kept=10)
    yield store
    store.close()


def processed(n: int | str, digest: str = "d") -> ProcessedTransaction:
    return ProcessedTransaction(str(n), digest)


class TestProcessedTransactions:
    def test_pruned_to_the_window(self, store, tmp_path):
        """Only about the last transactions_kept transactions are remembered."""
        for n in range(35):
            store.commit(Batch(), processed(n))
        assert store.processed_digest("34") == "d"
        assert store.processed_digest("0") is None
        kept = [str(n) for n in range(35) if store.processed_digest(str(n)) is not None]
        assert 10 <= len(kept) < 12  # pruned in steps of a tenth of the window
        assert kept == [str(n) for n in range(35 - len(kept), 35)]
        on_disk = store._conn.execute("SELECT count(*) FROM transactions").fetchone()[0]
        assert on_disk == len(kept)

    def test_reopened_store_knows_the_window(self, store, tmp_path):
        """A reopened store knows the newest transactions_kept transactions and their digests."""
        for n in range(15):
            store.commit(Batch(), processed(n, f"d{n}"))
        store.close()
        reopened = SqliteStore(tmp_path / "s.db", transactions_kept=10)
        assert [reopened.processed_digest(str(n)) for n in range(15)] == (
            [None] * 5 + [f"d{n}" for n in range(5, 15)])
        reopened.close()

    def test_a_reused_id_replaces_the_record_and_counts_as_newest(self, store):
        """After a counter reset, the id's new digest is kept and pruning keeps it longest."""
        for n in range(1, 11):
            store.commit(Batch(), processed(n, "before"))
        store.commit(Batch(), processed(1, "after"))  # the homeserver counts from 1 again
        assert store.processed_digest("1") == "after"
        store.commit(Batch(), processed(11, "before"))
        assert store.processed_digest("1") == "after"  # the newest, not pruned first
        assert store.processed_digest("2") is None

    def test_a_file_without_digests_is_upgraded(self, tmp_path):
        """A store written by a version that kept only ids opens; those ids have digest ''."""
        import sqlite3

        db = sqlite3.connect(tmp_path / "old.db")
        db.execute("CREATE TABLE transactions (txn_id TEXT PRIMARY KEY, at REAL NOT NULL)")
        db.execute("INSERT INTO transactions VALUES ('7', 0)")
        db.commit()
        db.close()
        store = SqliteStore(tmp_path / "old.db")
        assert store.processed_digest("7") == ""
        store.commit(Batch(), processed(8, "new"))
        assert store.processed_digest("8") == "new"
        store.close()

    def test_commit_is_atomic(self, store):
        """If the commit fails, neither the id nor the writes are recorded."""
        plugin = PluginStore(store, "p")
        batch = Batch()
        with unit_of_work(batch):
            plugin.put("k", "v")
        batch.audit.append(AuditRecord("p", "on_send_event", "veto", detail=object()))  # unbindable
        with pytest.raises(Exception, match="type"):
            store.commit(batch, processed("t1"))
        assert store.processed_digest("t1") is None
        assert plugin.get("k") is None


class TestPluginStore:
    def test_put_get_delete_items_are_scoped(self, store):
        """Each plugin sees only its own keys; values round-trip through JSON."""
        a, b = PluginStore(store, "a"), PluginStore(store, "b")
        a.put("room/1", {"mxid": "@x:y", "n": [1, 2]})
        a.put("room/2", "two")
        a.put("other", 3)
        b.put("room/1", "b's")
        assert a.get("room/1") == {"mxid": "@x:y", "n": [1, 2]}
        assert a.items("room/") == [("room/1", {"mxid": "@x:y", "n": [1, 2]}), ("room/2", "two")]
        a.delete("room/2")
        a.delete("never-there")
        assert a.get("room/2", "gone") == "gone"
        assert b.items() == [("room/1", "b's")]

    def test_writes_in_a_unit_wait_for_its_commit(self, store):
        """Inside a unit of work writes are visible to the writer only, until committed."""
        plugin = PluginStore(store, "p")
        plugin.put("k", 1)
        batch = Batch()
        with unit_of_work(batch):
            plugin.put("k", 2)
            plugin.put("new", "x")
            plugin.delete("k")
            assert plugin.get("k") is None
            assert plugin.items() == [("new", "x")]
            assert store.get("p", "k") == "1"
        store.commit(batch)
        assert plugin.get("k") is None
        assert plugin.get("new") == "x"

    def test_writes_after_the_unit_closed_commit_at_once(self, store):
        """A task that outlives its unit (the batch is committed) writes straight through."""
        plugin = PluginStore(store, "p")
        batch = Batch()
        with unit_of_work(batch):
            store.commit(batch)
            assert current_batch() is None
            plugin.put("late", True)
        assert store.get("p", "late") == "true"

    def test_non_string_keys_are_refused(self, store):
        """Keys must be strings (the error says what was given)."""
        with pytest.raises(TypeError, match="got int"):
            PluginStore(store, "p").put(1, "x")


def test_audit_outside_a_unit_is_written_at_once(store):
    """record_decision commits directly when no unit of work is open."""
    record_decision(store, AuditRecord("p", "on_query_user", "exists", detail="@a:b"))
    [record] = store.audit_log()
    assert (record.plugin, record.hook, record.decision, record.detail) == (
        "p", "on_query_user", "exists", "@a:b")


class TestAuditBound:
    def test_audit_log_keeps_the_newest_records(self, tmp_path):
        """The audit log is pruned to about the newest audit_kept records, oldest first out."""
        store = SqliteStore(tmp_path / "a.db", audit_kept=20)
        for n in range(75):
            store.commit(Batch(audit=[AuditRecord("p", "on_send_event", "veto", f"$e{n}")]))
        count = store._conn.execute("SELECT count(*) FROM audit").fetchone()[0]
        assert 20 <= count < 22  # pruned in steps of a tenth of the bound
        newest = store.audit_log(limit=count)
        assert [r.event_id for r in newest] == [f"$e{n}" for n in range(75 - count, 75)]
        store.close()

    def test_a_restart_prunes_what_a_larger_bound_left(self, tmp_path):
        """Lowering audit_kept takes effect at the first commit after the restart."""
        store = SqliteStore(tmp_path / "a.db", audit_kept=1000)
        store.commit(Batch(audit=[AuditRecord("p", "h", "veto", f"$e{n}") for n in range(50)]))
        store.close()
        smaller = SqliteStore(tmp_path / "a.db", audit_kept=10)
        smaller.commit(Batch(audit=[AuditRecord("p", "h", "veto", "$last")]))
        assert smaller._conn.execute("SELECT count(*) FROM audit").fetchone()[0] == 10
        smaller.close()


def test_a_closed_store_is_not_reopened(tmp_path):
    """A plugin task that outlives the container gets an error, not a new connection."""
    from servletkit.store.sqlite import StoreClosedError

    store = SqliteStore(tmp_path / "c.db")
    store.commit(Batch(), processed("t1"))
    store.close()
    with pytest.raises(StoreClosedError, match="is closed"):
        PluginStore(store, "p").put("k", "v")
    with pytest.raises(StoreClosedError):
        store.processed_digest("t1")
