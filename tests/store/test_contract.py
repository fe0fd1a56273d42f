"""Every store backend (SQLite, PostgreSQL): bounded transaction ids, atomic commits, the
audit log, closing, and (PostgreSQL) several instances on one database."""

from __future__ import annotations

import asyncio

import pytest

from servletkit.store import (
    AuditRecord,
    Batch,
    PluginStore,
    ProcessedTransaction,
    StoreClosedError,
    unit_of_work,
)
from tests.store.conftest import rows


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
        assert await rows(store, "transactions") == len(kept)

    async def test_reopened_store_knows_the_window(self, store, make_store):
        """A reopened store knows the newest transactions_kept transactions and their digests."""
        for n in range(15):
            await store.commit(Batch(), processed(n, f"d{n}"))
        await store.close()
        reopened = make_store(transactions_kept=10)
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

    async def test_one_commit_holds_writes_audit_and_transaction(self, store):
        """A unit's writes, deletions, audit records and the transaction arrive together."""
        await PluginStore(store, "p").put("gone", 1)
        record = AuditRecord("p", "on_send_event", "veto", "$e", "!r", "spam")
        batch = Batch(writes={("p", "k"): '"v"', ("p", "gone"): None}, audit=[record])
        await store.commit(batch, processed("t", "dt"))
        assert batch.open is False
        assert (await store.processed_digest("t"), await store.get("p", "k"),
                await store.get("p", "gone"), await store.audit_log()) == (
            "dt", '"v"', None, [record])

    async def test_items_sort_bytewise_and_match_the_prefix_literally(self, store):
        """items() sorts keys as Python does and treats %, _ and non-ASCII in the prefix
        as plain characters."""
        keys = ["a%1", "a_2", "aX", "a\u00e9", "a%", "B", "a", "\u00e9"]
        await store.commit(Batch(writes={("p", k): "1" for k in keys}))
        assert [k for k, _ in await store.items("p")] == sorted(keys)
        assert [k for k, _ in await store.items("p", "a%")] == ["a%", "a%1"]
        assert [k for k, _ in await store.items("p", "a_")] == ["a_2"]


class TestAuditBound:
    async def test_audit_log_keeps_the_newest_records(self, make_store):
        """The audit log is pruned to about the newest audit_kept records, oldest first out."""
        store = make_store(audit_kept=20)
        for n in range(75):
            await store.commit(Batch(audit=[AuditRecord("p", "on_send_event", "veto", f"$e{n}")]))
        count = await rows(store, "audit")
        assert 20 <= count < 22  # pruned in steps of a tenth of the bound
        newest = await store.audit_log(limit=count)
        assert [r.event_id for r in newest] == [f"$e{n}" for n in range(75 - count, 75)]
        await store.close()

    async def test_a_restart_prunes_what_a_larger_bound_left(self, make_store):
        """Lowering audit_kept takes effect at the first commit after the restart."""
        store = make_store(audit_kept=1000)
        await store.commit(Batch(audit=[AuditRecord("p", "h", "veto", f"$e{n}")
                                        for n in range(50)]))
        await store.close()
        smaller = make_store(audit_kept=10)
        await smaller.commit(Batch(audit=[AuditRecord("p", "h", "veto", "$last")]))
        assert await rows(smaller, "audit") == 10
        await smaller.close()


async def test_a_closed_store_is_not_reopened(make_store):
    """A plugin task that outlives the container gets an error, not a new connection."""
    store = make_store()
    await store.commit(Batch(), processed("t1"))
    await store.close()
    with pytest.raises(StoreClosedError, match="is closed"):
        await PluginStore(store, "p").put("k", "v")
    with pytest.raises(StoreClosedError):
        await store.processed_digest("t1")


async def test_two_instances_share_transactions_and_data(postgres_url):
    """Two stores on one database (two container instances): a transaction one recorded is
    processed for the other (a retry to another instance is not handled again), and
    plugin data written by one is read by the other."""
    from servletkit.store.postgres import PostgresStore

    first, second = PostgresStore(postgres_url), PostgresStore(postgres_url)
    await asyncio.gather(first.open(), second.open())  # both migrate at once: one applies
    try:
        await first.commit(Batch(writes={("bridge", "room/1"): '"@x:y"'}), processed("t1", "d1"))
        assert await second.processed_digest("t1") == "d1"
        assert await second.get("bridge", "room/1") == '"@x:y"'
        await second.commit(Batch(), processed("t1", "d1-again"))  # a reused id, via the other
        assert await first.processed_digest("t1") == "d1-again"
        assert await rows(first, "transactions") == 1
    finally:
        await first.close()
        await second.close()
