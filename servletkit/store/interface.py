"""What the container needs from durable storage: the :class:`Store` protocol and its values.

Every method that may do I/O is a coroutine, so a networked store (PostgreSQL,
for several container instances) implements the same protocol as the embedded
SQLite file; callers always ``await`` them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol, TypeVar

import attrs

if TYPE_CHECKING:
    from servletkit.store.units import Batch

T = TypeVar("T")

Change = Callable[[str | None], tuple[str | None, T]]
"""What :meth:`Store.update` applies: the committed text (``None``: absent) → the text to
write (``None``: delete) and a result for the caller."""


@attrs.frozen
class ProcessedTransaction:
    """A homeserver transaction as the store remembers it once it is handled.

    ``digest`` stands for its content (see
    :func:`servletkit.wires.appservice.wire.transaction_digest`); an empty
    digest means "unknown" (recorded by a version that kept only ids).
    """

    txn_id: str
    digest: str


@attrs.frozen
class AuditRecord:
    """One decision as the audit log keeps it.

    ``decision`` is ``"allow"``, ``"modify"`` or ``"veto"`` (or what a wire
    did about it, e.g. ``"redacted"``); ``detail`` says why or what happened.
    """

    plugin: str | None
    hook: str
    decision: str
    event_id: str | None = None
    room_id: str | None = None
    detail: str = ""
    at: float = attrs.field(factory=time.time)


class StoreClosedError(RuntimeError):
    """The store was used after the container stopped (a plugin task outlived it)."""


class Hold(Protocol):
    """This instance's hold on a name among every instance on one store (taken with
    :meth:`Store.hold`; what :mod:`servletkit.store.singleton` runs under)."""

    async def lost(self) -> None:
        """Return once the hold is lost (its database session ended); wait while kept."""

    async def release(self) -> None:
        """Give the hold up, so another instance can take it. Releasing twice does nothing."""


class Store(Protocol):
    """Durable state: processed transactions, each plugin's data, the audit log.

    Plugin data is JSON text under ``(plugin, key)``. A closed store raises
    :class:`StoreClosedError` rather than opening again.
    """

    async def open(self) -> None:
        """Connect and create what is missing; the container awaits it before the wires
        listen. Opening an open store does nothing."""

    async def close(self) -> None:
        """Release the storage; the store is unusable after."""

    async def processed_digest(self, txn_id: str) -> str | None:
        """The digest of the committed transaction ``txn_id`` (within the kept window), or
        ``None`` if no transaction with that id was committed."""

    async def commit(self, batch: Batch, transaction: ProcessedTransaction | None = None) -> None:
        """Write ``batch`` (and record ``transaction`` as processed, replacing an earlier
        record of its id) atomically.

        Closes ``batch`` (``batch.open = False``) before its first ``await``, so a
        task that outlives the unit of work writes on its own instead of into a
        batch already being written.
        """

    def exclusive(self, name: str) -> AbstractAsyncContextManager[None]:
        """Held by one holder of ``name`` at a time among every instance using this
        store (``async with store.exclusive(name):``); released when its holder dies.
        The appservice wire handles transactions under it, so two instances sent the
        same transaction at once handle it once, in order. In-process for SQLite."""
        ...

    async def hold(self, name: str) -> Hold | None:
        """Take ``name`` among every instance on this store without waiting: a
        :class:`Hold` if this instance now holds it, ``None`` if another holder has it.
        A hold ends with its holder (process or database session), unlike ``exclusive``
        it is meant to be kept for long. In-process for SQLite."""

    async def get(self, plugin: str, key: str) -> str | None:
        """The committed JSON text stored by ``plugin`` under ``key``, or ``None``."""

    async def update(self, plugin: str, key: str, change: Change[T]) -> T:
        """Read ``plugin``'s ``key``, write what ``change`` makes of it and return
        ``change``'s result, atomically among every instance on this store: two updates of
        one key never both see the same value (counters shared by instances stay exact).
        ``change`` is synchronous and may be called again if the store retries; it is
        committed at once, outside any unit of work."""
        ...

    async def items(self, plugin: str, prefix: str = "") -> list[tuple[str, str]]:
        """The committed ``(key, JSON text)`` pairs of ``plugin`` whose key starts with
        ``prefix``, sorted by key (one query, not one per key)."""

    async def audit_log(self, limit: int = 100) -> list[AuditRecord]:
        """The newest ``limit`` audit records, oldest first."""


@attrs.frozen
class StoreContents:
    """Everything a store holds, for moving a deployment to another store
    (``servletkit store migrate``): processed transactions ``(txn_id, digest, at)``
    oldest first, plugin data ``(plugin, key, JSON text)``, audit records oldest first."""

    transactions: list[tuple[str, str, float]]
    data: list[tuple[str, str, str]]
    audit: list[AuditRecord]


class NotEmptyError(RuntimeError):
    """A store to restore into already holds data (restoring would mix two deployments)."""
