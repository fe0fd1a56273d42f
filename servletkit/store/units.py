"""Units of work: what one homeserver transaction writes, committed at once.

The appservice wire handles a homeserver transaction inside a :class:`Batch`:
while it is current (a context variable, so it follows the hook calls and the
tasks they start), plugin writes and audit records are held in memory,
visible to reads in the same unit, and written in *one* commit together with
the transaction's record (:meth:`Store.commit
<servletkit.store.interface.Store.commit>`). So a transaction is recorded if
and only if the data its events produced is; a crash before that commit loses
both, and the homeserver resends the transaction. Writes outside a unit (a
query hook, a background task after its unit ended) are committed at once.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

import attrs

from servletkit.hooks.decisions import Veto
from servletkit.store.interface import AuditRecord, Store

if TYPE_CHECKING:
    from servletkit.hooks.dispatcher import Outcome

DECISIONS_LOGGER: Final = "servletkit.decisions"
"""Each decision's audit record is logged here at INFO (on with ``[logging] decisions``)."""

_decisions = logging.getLogger(DECISIONS_LOGGER)


@attrs.define(eq=False)
class Batch:
    """The writes and audit records of one unit of work, until it is committed.

    ``writes`` maps ``(plugin, key)`` to the JSON text to store, or to ``None``
    to delete the key. ``open`` is false once a store has begun committing it.
    """

    writes: dict[tuple[str, str], str | None] = attrs.field(factory=dict)
    audit: list[AuditRecord] = attrs.field(factory=list)
    open: bool = True


_current_batch: contextvars.ContextVar[Batch | None] = contextvars.ContextVar(
    "servletkit_store_batch", default=None
)


def current_batch() -> Batch | None:
    """The unit of work the caller runs in, if one is open."""
    batch = _current_batch.get()
    return batch if batch is not None and batch.open else None


@contextlib.contextmanager
def unit_of_work(batch: Batch) -> Iterator[Batch]:
    """Make ``batch`` the current unit of work inside the ``with`` block."""
    token = _current_batch.set(batch)
    try:
        yield batch
    finally:
        _current_batch.reset(token)


def audit_record(
    outcome: Outcome,
    event_id: str | None = None,
    room_id: str | None = None,
    detail: str | None = None,
    *,
    wire: str | None = None,
) -> AuditRecord:
    """The audit record of an interception ``outcome`` that has a decision, made on
    ``wire``; logged to :data:`DECISIONS_LOGGER` when it logs INFO.

    ``detail`` defaults to the Veto's reason (empty for Allow and Modify).
    """
    decision = outcome.decision
    if detail is None:
        detail = decision.reason if type(decision) is Veto else ""
    record = AuditRecord(outcome.decided_by, outcome.hook, type(decision).__name__.lower(),
                         event_id, room_id, detail)
    if _decisions.isEnabledFor(logging.INFO):
        _decisions.info("%s: %s %s event %s in %s", record.plugin, record.hook, record.decision,
                        event_id, room_id, extra={
                            "plugin": record.plugin, "hook": record.hook, "wire": wire,
                            "decision": record.decision, "event_id": event_id,
                            "room_id": room_id})
    return record


async def record_decision(store: Store, record: AuditRecord) -> None:
    """Add ``record`` to the current unit of work, or commit it at once if there is none."""
    batch = current_batch()
    if batch is not None:
        batch.audit.append(record)
    else:
        await store.commit(Batch(audit=[record]))


@attrs.define
class PruneSchedule:
    """When a store prunes a table it keeps to ``kept`` rows (processed transactions,
    the audit log): once every tenth of ``kept`` rows added, so most commits delete
    nothing. It starts due, so the first write after a start prunes what an earlier
    run (or a larger bound) left. Both backends use it."""

    step: int
    added: int

    @classmethod
    def keeping(cls, kept: int) -> PruneSchedule:
        """The schedule for a table of at most ``kept`` rows."""
        step = max(1, kept // 10)
        return cls(step, step)

    def due(self, added: int = 1) -> bool:
        """Count ``added`` new rows; whether to prune now (the count then restarts)."""
        self.added += added
        if self.added < self.step:
            return False
        self.added = 0
        return True
