"""Audit records join the current unit of work, or are written at once."""

from __future__ import annotations

from servletkit.store import AuditRecord, Batch, record_decision, unit_of_work
from servletkit.store.units import PruneSchedule


async def test_audit_outside_a_unit_is_written_at_once(store):
    """record_decision commits directly when no unit of work is open."""
    await record_decision(store, AuditRecord("p", "on_query_user", "exists", detail="@a:b"))
    [record] = await store.audit_log()
    assert (record.plugin, record.hook, record.decision, record.detail) == (
        "p", "on_query_user", "exists", "@a:b")


async def test_audit_in_a_unit_waits_for_its_commit(store):
    """Inside a unit of work the record is held in the batch and written with it."""
    record = AuditRecord("p", "on_send_event", "veto", "$e", detail="spam")
    batch = Batch()
    with unit_of_work(batch):
        await record_decision(store, record)
    assert batch.audit == [record]
    assert await store.audit_log() == []
    await store.commit(batch)
    assert await store.audit_log() == [record]


def test_the_prune_schedule_is_due_at_start_then_every_tenth() -> None:
    schedule = PruneSchedule.keeping(100)
    assert schedule.due()  # what an earlier run left
    assert [schedule.due() for _ in range(10)] == [False] * 9 + [True]
    assert not schedule.due(9) and schedule.due(1)  # audit records come several at once
    assert all(PruneSchedule.keeping(5).due() for _ in range(3))  # a step of at least 1
