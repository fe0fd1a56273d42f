"""The embedded store: one SQLite file in WAL mode (``[store] path``).

**Processed transactions.** Each is recorded with its id and a digest of what
it contained (:class:`~servletkit.store.interface.ProcessedTransaction`),
because a homeserver may reuse ids: Synapse on SQLite numbers them from 1
again after a restart. The wire tells a retry (same id, same digest) from a
new transaction with a reused id (same id, another digest) by comparing the two.

**Synchronous inside, never waiting on the loop.** The
:class:`~servletkit.store.interface.Store` protocol is asynchronous for
networked stores; this implementation does its work directly in those
coroutines, on the event loop. A commit in WAL mode costs about 25 µs with
``synchronous = "normal"`` and about 130 µs with ``"full"``, a read about 7 µs;
handing each call to a thread costs about 110 µs more (measured on the 2-core
development machine), so the calls stay on the loop. What must not stay there
is *waiting*: while another process holds the file's write lock, SQLite's own
busy handler would sleep inside the call, holding every wire. So the
connection's busy timeout is 0 and a call SQLite answers "busy" is retried
after an ``asyncio.sleep`` (1 ms doubling to 50 ms) for up to
``busy_timeout_s`` in all (5 s, SQLite's usual), then raises
:class:`StoreBusyError`. Each retried piece is atomic (one statement, or a
whole ``BEGIN`` … ``COMMIT`` rolled back on failure), so no transaction is
open while the loop runs something else.
Plugins writing large amounts of data should batch it in one value, or run
their own database.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

from servletkit.store.interface import (
    AuditRecord,
    Change,
    NotEmptyError,
    ProcessedTransaction,
    StoreClosedError,
    StoreContents,
    T,
)
from servletkit.store.singleton import LocalHold
from servletkit.store.units import Batch, PruneSchedule

_T = TypeVar("_T")
_FIRST_PAUSE_S: Final = 0.001
_LONGEST_PAUSE_S: Final = 0.05


class StoreBusyError(sqlite3.OperationalError):
    """Another process held the SQLite file's lock for the whole busy timeout."""


def _busy(error: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused because another connection holds a lock (SQLITE_BUSY or
    SQLITE_LOCKED, extended codes included)."""
    return getattr(error, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_BUSY,
                                                            sqlite3.SQLITE_LOCKED)

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS transactions (
        txn_id TEXT PRIMARY KEY, at REAL NOT NULL, digest TEXT NOT NULL DEFAULT ''
    )""",
    """CREATE TABLE IF NOT EXISTS plugin_data (
        plugin TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (plugin, key)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY, at REAL NOT NULL, plugin TEXT, hook TEXT NOT NULL,
        decision TEXT NOT NULL, event_id TEXT, room_id TEXT, detail TEXT NOT NULL
    )""",
)


def _schema_1(db: sqlite3.Connection) -> None:
    """The tables as they were before schema versions (a file of that time keeps its data)."""
    for statement in _SCHEMA:
        db.execute(statement)
    columns = {row[1] for row in db.execute("PRAGMA table_info(transactions)")}
    if "digest" not in columns:  # a file written before digests were kept
        db.execute("ALTER TABLE transactions ADD COLUMN digest TEXT NOT NULL DEFAULT ''")


#: Schema migrations, in order: ``MIGRATIONS[n]`` takes a file from version n to n + 1
#: (``schema_version`` holds the number applied).
MIGRATIONS: Final[tuple[Callable[[sqlite3.Connection], None], ...]] = (_schema_1,)


def migrate(db: sqlite3.Connection) -> int:
    """Bring the file's schema up to date in one transaction; the version it is at."""
    db.execute("BEGIN IMMEDIATE")  # one process migrates; another waits, then sees it done
    try:
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT version FROM schema_version").fetchone()
        version = 0 if row is None else int(row[0])
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"the file's schema is version {version}, newer than this servletkit "
                f"knows ({len(MIGRATIONS)}): upgrade servletkit")
        for step in MIGRATIONS[version:]:
            step(db)
        if row is None:
            db.execute("INSERT INTO schema_version VALUES (?)", (len(MIGRATIONS),))
        elif version != len(MIGRATIONS):
            db.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS),))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return len(MIGRATIONS)


class SqliteStore:
    """The embedded store: one SQLite file in WAL mode.

    Processed transactions are kept for the last ``transactions_kept``
    commits (a lookup is one primary-key read, a few microseconds). That
    bound is safe because a homeserver only ever resends a transaction it has
    not had a 2xx for: Synapse keeps one in flight and retries the oldest
    unacknowledged one first, so a retry is always among the last few
    processed. 10,000 leaves a wide margin for homeservers that pipeline.

    The audit log keeps the newest ``audit_kept`` records. A call that finds the
    file locked by another process is retried without holding the event loop for
    up to ``busy_timeout_s`` seconds, then raises :class:`StoreBusyError`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "normal",
        transactions_kept: int = 10_000,
        audit_kept: int = 100_000,
        busy_timeout_s: float = 5.0,
    ) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.synchronous = synchronous.upper()
        self.transactions_kept = transactions_kept
        self.audit_kept = audit_kept
        self._audit_pruning = PruneSchedule.keeping(audit_kept)
        self._transactions_pruning = PruneSchedule.keeping(transactions_kept)
        self._db: sqlite3.Connection | None = None
        self._closed = False
        self._exclusive: dict[str, asyncio.Lock] = {}
        self._held: set[str] = set()

    async def open(self) -> None:
        """Open (creating if needed) the file and its tables.

        Also done on first use, so a store built outside the container's lifespan
        (a test, a script reading the audit log) needs no ``open``.
        """
        self._connect()

    def _connect(self) -> None:
        if self._db is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # created owner-only before SQLite opens it: SQLite gives the -wal and -shm
        # files the database's mode, and the three hold plugin data and the audit log
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        # opening waits in SQLite's busy handler (before the wires listen, or in a script)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                             timeout=self.busy_timeout_s)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        try:
            migrate(db)
        except BaseException:
            db.close()
            raise
        db.execute("PRAGMA busy_timeout = 0")  # from now on the waiting is _retried's
        self._db = db

    async def close(self) -> None:
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
            self._connect()
        assert self._db is not None  # internal invariant: _connect() sets it
        return self._db

    async def _retried(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """``work(connection)``, retried after a pause while SQLite says the file is busy.

        ``work`` must be atomic: one statement, or a transaction it ends itself.
        """
        try:
            return work(self._conn)
        except sqlite3.OperationalError as error:
            if not _busy(error):
                raise
        deadline = time.monotonic() + self.busy_timeout_s
        pause = _FIRST_PAUSE_S
        while True:
            await asyncio.sleep(pause)
            try:
                return work(self._conn)
            except sqlite3.OperationalError as error:
                if not _busy(error):
                    raise
                if time.monotonic() >= deadline:
                    raise StoreBusyError(
                        f"the store {self.path} stayed locked by another process for "
                        f"{self.busy_timeout_s:g} s: {error}") from error
            pause = min(pause * 2, _LONGEST_PAUSE_S, max(0.0, deadline - time.monotonic()))

    async def processed_digest(self, txn_id: str) -> str | None:
        """The digest recorded for ``txn_id`` among the kept transactions, or ``None``."""
        row = await self._retried(lambda db: db.execute(
            "SELECT digest FROM transactions WHERE txn_id = ?", (txn_id,)).fetchone())
        return None if row is None else str(row[0])

    async def commit(self, batch: Batch, transaction: ProcessedTransaction | None = None) -> None:
        """One SQLite transaction: the plugin writes, the audit records, the transaction."""
        batch.open = False
        if transaction is not None and not batch.writes and not batch.audit:
            # nothing but the transaction: one statement, committed on its own
            await self._retried(lambda db: self._record(db, transaction))
            return
        await self._retried(lambda db: self._write(db, batch, transaction))

    def _write(self, db: sqlite3.Connection, batch: Batch,
               transaction: ProcessedTransaction | None) -> None:
        db.execute("BEGIN")
        try:
            if transaction is not None:
                self._record(db, transaction)
            if batch.writes:
                db.executemany(
                    "INSERT OR REPLACE INTO plugin_data VALUES (?, ?, ?)",
                    [(p, k, v) for (p, k), v in batch.writes.items() if v is not None],
                )
                db.executemany(
                    "DELETE FROM plugin_data WHERE plugin = ? AND key = ?",
                    [(p, k) for (p, k), v in batch.writes.items() if v is None],
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
            if db.in_transaction:  # SQLite rolls back by itself on a full disk or an I/O error
                db.execute("ROLLBACK")
            raise

    def _record(self, db: sqlite3.Connection, transaction: ProcessedTransaction) -> None:
        # REPLACE gives a reused id a new rowid, so the rowid order stays the commit order
        db.execute("INSERT OR REPLACE INTO transactions (txn_id, at, digest) VALUES (?, ?, ?)",
                   (transaction.txn_id, time.time(), transaction.digest))
        if not self._transactions_pruning.due():
            return
        db.execute("DELETE FROM transactions WHERE rowid <= "
                   "(SELECT MAX(rowid) FROM transactions) - ?", (self.transactions_kept,))

    def _prune_audit(self, db: sqlite3.Connection, added: int) -> None:
        if not self._audit_pruning.due(added):
            return
        db.execute("DELETE FROM audit WHERE id <= (SELECT MAX(id) FROM audit) - ?",
                   (self.audit_kept,))

    def exclusive(self, name: str) -> asyncio.Lock:
        """One holder of ``name`` at a time in this process (the file has one writer): the
        lock itself, which ``async with`` takes (no generator-based context manager around
        it, as the appservice wire takes it for every transaction)."""
        lock = self._exclusive.get(name)
        if lock is None:
            lock = self._exclusive[name] = asyncio.Lock()
        return lock

    async def hold(self, name: str) -> LocalHold | None:
        """``name`` for this process, unless a task of it holds it already."""
        return None if name in self._held else LocalHold(self._held, name)

    async def get(self, plugin: str, key: str) -> str | None:
        """The committed JSON text of ``plugin``'s ``key``."""
        row = await self._retried(lambda db: db.execute(
            "SELECT value FROM plugin_data WHERE plugin = ? AND key = ?", (plugin, key)
        ).fetchone())
        return str(row[0]) if row else None

    async def update(self, plugin: str, key: str, change: Change[T]) -> T:
        """Read and write ``key`` in one ``BEGIN IMMEDIATE`` transaction (it takes the
        file's write lock first, so another process's update waits for it)."""
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT value FROM plugin_data WHERE plugin = ? AND key = ?",
                             (plugin, key)).fetchone()
            text, result = change(row[0] if row else None)
            if text is None:
                db.execute("DELETE FROM plugin_data WHERE plugin = ? AND key = ?", (plugin, key))
            else:
                db.execute("INSERT OR REPLACE INTO plugin_data VALUES (?, ?, ?)",
                           (plugin, key, text))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return result

    async def items(self, plugin: str, prefix: str = "") -> list[tuple[str, str]]:
        """The committed ``(key, JSON text)`` pairs of ``plugin`` whose key starts with
        ``prefix``, sorted by key."""
        rows: list[tuple[str, str]] = await self._retried(lambda db: db.execute(
            "SELECT key, value FROM plugin_data WHERE plugin = ? AND substr(key, 1, ?) = ? "
            "ORDER BY key",
            (plugin, len(prefix), prefix),
        ).fetchall())
        return rows

    async def audit_log(self, limit: int = 100) -> list[AuditRecord]:
        """The newest ``limit`` audit records, oldest first."""
        rows = await self._retried(lambda db: db.execute(
            "SELECT plugin, hook, decision, event_id, room_id, detail, at FROM audit "
            "ORDER BY id DESC LIMIT ?", (limit,),
        ).fetchall())
        return [AuditRecord(*row) for row in reversed(rows)]

    async def count(self, table: str) -> int:
        """How many rows ``table`` (``transactions``, ``plugin_data``, ``audit``) holds."""
        if table not in ("transactions", "plugin_data", "audit"):
            raise ValueError(f"no table {table!r} in the store")
        row = await self._retried(
            lambda db: db.execute(f"SELECT count(*) FROM {table}").fetchone())
        return int(row[0])

    async def dump(self) -> StoreContents:
        """Everything the file holds (for ``servletkit store migrate``)."""
        return await self._retried(self._dump)

    @staticmethod
    def _dump(db: sqlite3.Connection) -> StoreContents:
        return StoreContents(
            transactions=db.execute(
                "SELECT txn_id, digest, at FROM transactions ORDER BY rowid").fetchall(),
            data=db.execute("SELECT plugin, key, value FROM plugin_data").fetchall(),
            audit=[AuditRecord(*row) for row in db.execute(
                "SELECT plugin, hook, decision, event_id, room_id, detail, at FROM audit "
                "ORDER BY id")],
        )

    async def restore(self, contents: StoreContents) -> None:
        """Write ``contents`` into this empty file, in one transaction (order kept)."""
        await self._retried(lambda db: self._restore(db, contents))

    def _restore(self, db: sqlite3.Connection, contents: StoreContents) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            for table in ("transactions", "plugin_data", "audit"):
                if db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None:
                    raise NotEmptyError(f"{self.path} already holds {table}: restore into "
                                        "an empty store")
            db.executemany("INSERT INTO transactions (txn_id, digest, at) VALUES (?, ?, ?)",
                           contents.transactions)
            db.executemany("INSERT INTO plugin_data VALUES (?, ?, ?)", contents.data)
            db.executemany(
                "INSERT INTO audit (at, plugin, hook, decision, event_id, room_id, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(r.at, r.plugin, r.hook, r.decision, r.event_id, r.room_id, r.detail)
                 for r in contents.audit])
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite rolls back by itself on a full disk or an I/O error
                db.execute("ROLLBACK")
            raise
