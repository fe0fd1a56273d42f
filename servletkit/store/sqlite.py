"""Durable state: processed transactions, each plugin's own data, the audit log.

One interface, :class:`Store`, with an embedded default, :class:`SqliteStore`
(the file named by ``[store] path``). Plugins see their own slice as
``context.store`` (a :class:`PluginStore`).

**Units of work.** The appservice wire handles a homeserver transaction inside
a :class:`Batch`: while it is current (a context variable, so it follows the
hook calls and the tasks they start), plugin writes and audit records are held
in memory, visible to reads in the same unit, and written in *one* SQLite
commit together with the transaction's record. So a transaction is recorded if
and only if the data its events produced is; a crash before that commit loses
both, and the homeserver resends the transaction.

**Processed transactions.** Each is recorded with its id and a digest of what
it contained (:class:`ProcessedTransaction`), because a homeserver may reuse
ids: Synapse on SQLite numbers them from 1 again after a restart. The wire
tells a retry (same id, same digest) from a new transaction with a reused id
(same id, another digest) by comparing the two. Writes outside a unit (a
query hook, a background task after its unit ended) are committed at once.

**Threading.** SQLite is called synchronously on the event loop. A commit in
WAL mode costs about 25 µs with ``synchronous = "normal"`` and about 130 µs
with ``"full"`` (measured on the 2-core development machine); handing each
commit to a thread would cost more than that in scheduling and make the
plugin API asynchronous. Plugins writing large amounts of data should batch
it in one value, or run their own database.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs

from servletkit.hooks.decisions import Veto

if TYPE_CHECKING:
    from servletkit.hooks.dispatcher import Outcome

_DELETED: Final = None
"""A pending write that deletes the key."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS transactions (
    txn_id TEXT PRIMARY KEY, at REAL NOT NULL, digest TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS plugin_data (
    plugin TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (plugin, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, plugin TEXT, hook TEXT NOT NULL,
    decision TEXT NOT NULL, event_id TEXT, room_id TEXT, detail TEXT NOT NULL
);
"""


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


@attrs.define(eq=False)
class Batch:
    """The writes and audit records of one unit of work, until it is committed."""

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


class Store(Protocol):
    """What the container needs from durable storage. All methods are synchronous and short."""

    def open(self) -> None:
        """Create or open the storage (the embedded store also does it on first use)."""

    def close(self) -> None:
        """Release the storage."""

    def processed_digest(self, txn_id: str) -> str | None:
        """The digest of the committed transaction ``txn_id`` (within the kept window), or
        ``None`` if no transaction with that id was committed."""

    def commit(self, batch: Batch, transaction: ProcessedTransaction | None = None) -> None:
        """Write ``batch`` (and record ``transaction`` as processed, replacing an earlier
        record of its id) atomically; close the batch."""

    def get(self, plugin: str, key: str) -> str | None:
        """The committed JSON text stored by ``plugin`` under ``key``, or ``None``."""

    def keys(self, plugin: str, prefix: str = "") -> list[str]:
        """The committed keys of ``plugin`` that start with ``prefix``, sorted."""

    def audit_log(self, limit: int = 100) -> list[AuditRecord]:
        """The newest ``limit`` audit records, oldest first."""


class StoreClosedError(RuntimeError):
    """The store was used after the container stopped (a plugin task outlived it)."""


class SqliteStore:
    """The embedded store: one SQLite file in WAL mode.

    Processed transactions are kept for the last ``transactions_kept``
    commits (a lookup is one primary-key read, a few microseconds). That
    bound is safe because a homeserver only ever resends a transaction it has
    not had a 2xx for: Synapse keeps one in flight and retries the oldest
    unacknowledged one first, so a retry is always among the last few
    processed. 10,000 leaves a wide margin for homeservers that pipeline.

    The audit log keeps the newest ``audit_kept`` records.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "normal",
        transactions_kept: int = 10_000,
        audit_kept: int = 100_000,
    ) -> None:
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        self.transactions_kept = transactions_kept
        self.audit_kept = audit_kept
        self._audit_step = max(1, audit_kept // 10)
        # records added since the audit log was last pruned; starts full, so the
        # first commit after a start prunes what an earlier run left
        self._audit_added = self._audit_step
        self._transactions_step = max(1, transactions_kept // 10)
        # like _audit_added: starts full, so the first record after a start prunes
        self._transactions_added = self._transactions_step
        self._db: sqlite3.Connection | None = None
        self._closed = False

    def open(self) -> None:
        """Open (creating if needed) the file and its tables."""
        if self._db is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(transactions)")}
        if "digest" not in columns:  # a file written before digests were kept
            db.execute("ALTER TABLE transactions ADD COLUMN digest TEXT NOT NULL DEFAULT ''")
        self._db = db

    def close(self) -> None:
        """Close the connection (SQLite checkpoints the WAL); the store is unusable after."""
        self._closed = True
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            if self._closed:
                raise StoreClosedError(f"the store {self.path} is closed (the container stopped)")
            self.open()
        assert self._db is not None  # internal invariant: open() sets it
        return self._db

    def processed_digest(self, txn_id: str) -> str | None:
        """The digest recorded for ``txn_id`` among the kept transactions, or ``None``."""
        row = self._conn.execute(
            "SELECT digest FROM transactions WHERE txn_id = ?", (txn_id,)
        ).fetchone()
        return None if row is None else row[0]

    def commit(self, batch: Batch, transaction: ProcessedTransaction | None = None) -> None:
        """One SQLite transaction: the plugin writes, the audit records, the transaction."""
        batch.open = False
        db = self._conn
        if transaction is not None and not batch.writes and not batch.audit:
            # nothing but the transaction: one statement, committed on its own
            self._record(db, transaction)
            return
        db.execute("BEGIN")
        try:
            if transaction is not None:
                self._record(db, transaction)
            if batch.writes:
                db.executemany(
                    "INSERT OR REPLACE INTO plugin_data VALUES (?, ?, ?)",
                    [(p, k, v) for (p, k), v in batch.writes.items() if v is not _DELETED],
                )
                db.executemany(
                    "DELETE FROM plugin_data WHERE plugin = ? AND key = ?",
                    [(p, k) for (p, k), v in batch.writes.items() if v is _DELETED],
                )
            if batch.audit:
                db.executemany(
                    "INSERT INTO audit (at, plugin, hook, decision, event_id, room_id, detail) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(r.at, r.plugin, r.hook, r.decision, r.event_id, r.room_id, r.detail)
                     for r in batch.audit],
                )
                self._prune_audit(db, len(batch.audit))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _record(self, db: sqlite3.Connection, transaction: ProcessedTransaction) -> None:
        # REPLACE gives a reused id a new rowid, so the rowid order stays the commit order
        db.execute("INSERT OR REPLACE INTO transactions (txn_id, at, digest) VALUES (?, ?, ?)",
                   (transaction.txn_id, time.time(), transaction.digest))
        # prune in steps of a tenth of the window, so most commits delete nothing
        self._transactions_added += 1
        if self._transactions_added < self._transactions_step:
            return
        self._transactions_added = 0
        db.execute("DELETE FROM transactions WHERE rowid <= "
                   "(SELECT MAX(rowid) FROM transactions) - ?", (self.transactions_kept,))

    def _prune_audit(self, db: sqlite3.Connection, added: int) -> None:
        # in steps of a tenth of the bound, so most commits delete nothing
        self._audit_added += added
        if self._audit_added < self._audit_step:
            return
        self._audit_added = 0
        db.execute("DELETE FROM audit WHERE id <= (SELECT MAX(id) FROM audit) - ?",
                   (self.audit_kept,))

    def get(self, plugin: str, key: str) -> str | None:
        """The committed JSON text of ``plugin``'s ``key``."""
        row = self._conn.execute(
            "SELECT value FROM plugin_data WHERE plugin = ? AND key = ?", (plugin, key)
        ).fetchone()
        return row[0] if row else None

    def keys(self, plugin: str, prefix: str = "") -> list[str]:
        """The committed keys of ``plugin`` starting with ``prefix``."""
        rows = self._conn.execute(
            "SELECT key FROM plugin_data WHERE plugin = ? AND substr(key, 1, ?) = ? ORDER BY key",
            (plugin, len(prefix), prefix),
        ).fetchall()
        return [row[0] for row in rows]

    def audit_log(self, limit: int = 100) -> list[AuditRecord]:
        """The newest ``limit`` audit records, oldest first."""
        rows = self._conn.execute(
            "SELECT plugin, hook, decision, event_id, room_id, detail, at FROM audit "
            "ORDER BY id DESC LIMIT ?", (limit,),
        ).fetchall()
        return [AuditRecord(*row) for row in reversed(rows)]


def audit_record(
    outcome: Outcome,
    event_id: str | None = None,
    room_id: str | None = None,
    detail: str | None = None,
) -> AuditRecord:
    """The audit record of an interception ``outcome`` that has a decision.

    ``detail`` defaults to the Veto's reason (empty for Allow and Modify).
    """
    decision = outcome.decision
    if detail is None:
        detail = decision.reason if type(decision) is Veto else ""
    return AuditRecord(outcome.decided_by, outcome.hook, type(decision).__name__.lower(),
                       event_id, room_id, detail)


def record_decision(store: Store, record: AuditRecord) -> None:
    """Add ``record`` to the current unit of work, or commit it at once if there is none."""
    batch = current_batch()
    if batch is not None:
        batch.audit.append(record)
    else:
        store.commit(Batch(audit=[record]))


class PluginStore:
    """One plugin's durable key/value data, as ``context.store``.

    Keys are strings; values anything JSON can hold. Inside a homeserver
    transaction, writes become durable with the transaction (see the module
    docs); elsewhere, when the call returns.
    """

    def __init__(self, store: Store, plugin: str) -> None:
        self._store = store
        self._plugin = plugin

    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default``."""
        batch = current_batch()
        if batch is not None and (self._plugin, key) in batch.writes:
            text = batch.writes[(self._plugin, key)]
        else:
            text = self._store.get(self._plugin, key)
        return default if text is None else json.loads(text)

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON-serialisable) under ``key``, replacing what was there."""
        if not isinstance(key, str):
            raise TypeError(f"store keys must be str, got {type(key).__name__}")
        self._write(key, json.dumps(value))

    def delete(self, key: str) -> None:
        """Forget ``key`` (no error if it is not there)."""
        self._write(key, _DELETED)

    def items(self, prefix: str = "") -> list[tuple[str, Any]]:
        """Every ``(key, value)`` whose key starts with ``prefix``, sorted by key."""
        keys = set(self._store.keys(self._plugin, prefix))
        batch = current_batch()
        if batch is not None:
            for plugin, key in batch.writes:
                if plugin == self._plugin and key.startswith(prefix):
                    keys.add(key)
        found = ((key, self.get(key, _MISSING)) for key in sorted(keys))
        return [(key, value) for key, value in found if value is not _MISSING]

    def _write(self, key: str, text: str | None) -> None:
        batch = current_batch()
        if batch is not None:
            batch.writes[(self._plugin, key)] = text
        else:
            self._store.commit(Batch(writes={(self._plugin, key): text}))


_MISSING: Final = object()

