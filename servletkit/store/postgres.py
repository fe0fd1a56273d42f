"""The networked store: PostgreSQL (``[store] url = "postgresql://…"``), for several instances.

**Driver: psycopg 3 with psycopg_pool.** It is fully typed (``mypy --strict``
checks our queries' call sites without stubs), it takes the connection string
exactly as libpq does (the same ``postgresql://`` URLs, ``sslmode``,
``.pgpass`` and ``PG*`` variables an admin already uses for Synapse and the
bridges), its maintained pool checks connections and reconnects after the
server restarts, and ``executemany`` runs in libpq's pipeline mode, so a unit
of work's writes cost one round trip. asyncpg is faster per query, but it
speaks its own protocol implementation with its own URL and TLS options and
ships no type information; at our rates (one commit per homeserver
transaction) the round trip, not the driver, is the cost.

**Same semantics as** :class:`~servletkit.store.sqlite.SqliteStore`: a unit of
work's plugin writes, its audit records and the transaction's record are one
database transaction; a reused transaction id replaces its record and counts
as the newest (``INSERT … ON CONFLICT (txn_id) DO UPDATE`` takes a new value
of a sequence); transactions and audit records are pruned to the newest
``transactions_kept`` / ``audit_kept``, in steps of a tenth. Several instances
on one database see each other's processed transactions and plugin data.

**Schema** changes are numbered migrations (:data:`MIGRATIONS`), applied at
open under an advisory lock, so instances starting together apply each once;
``schema_version`` holds the number applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any, Final

import psycopg
from psycopg_pool import AsyncConnectionPool

from servletkit.store.interface import (
    AuditRecord,
    Change,
    NotEmptyError,
    ProcessedTransaction,
    StoreClosedError,
    StoreContents,
    T,
)
from servletkit.store.singleton import CHECK_S
from servletkit.store.units import Batch, PruneSchedule

#: Schema migrations, in order: ``MIGRATIONS[n]`` takes the schema from version n to n + 1.
#: Keys and plugin names sort bytewise (``COLLATE "C"``), as in SQLite and Python.
MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE SEQUENCE transactions_seq;
    CREATE TABLE transactions (
        txn_id TEXT PRIMARY KEY, seq BIGINT NOT NULL, at DOUBLE PRECISION NOT NULL,
        digest TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX transactions_by_seq ON transactions (seq);
    CREATE TABLE plugin_data (
        plugin TEXT COLLATE "C" NOT NULL, key TEXT COLLATE "C" NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (plugin, key)
    );
    CREATE TABLE audit (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at DOUBLE PRECISION NOT NULL,
        plugin TEXT, hook TEXT NOT NULL, decision TEXT NOT NULL, event_id TEXT,
        room_id TEXT, detail TEXT NOT NULL
    );
    """,
)

# pg_advisory_xact_lock key taken while migrating ("servletkit" in ASCII, truncated)
_MIGRATION_LOCK: Final = 0x7365727665746B69


def redacted(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    userinfo = netloc[0].partition(":")[0] + ":***"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc[2]}"))


async def migrate(conn: psycopg.AsyncConnection[Any]) -> int:
    """Bring the schema up to date (under an advisory lock); the version it is at."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = await (await conn.execute("SELECT version FROM schema_version")).fetchone()
        version = 0 if row is None else int(row[0])
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"the database's schema is version {version}, newer than this servletkit "
                f"knows ({len(MIGRATIONS)}): upgrade servletkit")
        for step in MIGRATIONS[version:]:
            await conn.execute(step.encode())
        if row is None:
            await conn.execute("INSERT INTO schema_version VALUES (%s)", (len(MIGRATIONS),))
        elif version != len(MIGRATIONS):
            await conn.execute("UPDATE schema_version SET version = %s", (len(MIGRATIONS),))
    return len(MIGRATIONS)


class AdvisoryHold:
    """A session advisory lock on a connection of its own (not the pool's), checked every
    ``check_s``: lost when that session ends (connection broken, server restarted,
    ``pg_terminate_backend``), released by closing the connection."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], check_s: float = CHECK_S) -> None:
        self._conn = conn
        self._check_s = check_s

    async def lost(self) -> None:
        """Return when a check fails or takes longer than ``check_s``."""
        while True:
            await asyncio.sleep(self._check_s)
            try:
                await asyncio.wait_for(self._conn.execute("SELECT 1"), self._check_s)
            except (psycopg.Error, TimeoutError):
                return

    async def release(self) -> None:
        """Close the session, which releases its lock."""
        await self._conn.close()


class PostgresStore:
    """The store in a PostgreSQL database, shared by any number of container instances.

    ``pool_size`` bounds this instance's connections. Opened on first use too, like
    the SQLite store, so a script needs no ``open``.
    """

    def __init__(
        self,
        url: str,
        *,
        transactions_kept: int = 10_000,
        audit_kept: int = 100_000,
        pool_size: int = 10,
    ) -> None:
        self.url = url
        self.transactions_kept = transactions_kept
        self.audit_kept = audit_kept
        self.pool_size = pool_size
        self._transactions_pruning = PruneSchedule.keeping(transactions_kept)
        self._audit_pruning = PruneSchedule.keeping(audit_kept)
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"PostgresStore({redacted(self.url)!r})"

    async def open(self) -> None:
        """Connect, apply missing migrations, and fill the pool."""
        await self._get_pool()

    async def _get_pool(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        if self._pool is not None:
            return self._pool
        if self._closed:
            raise StoreClosedError(
                f"the store {redacted(self.url)} is closed (the container stopped)")
        # one direct connection first: its error says why (refused, auth), where the
        # pool would only time out
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            await migrate(conn)
        if self._pool is None:  # another task may have opened it meanwhile
            pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
                self.url, min_size=1, max_size=self.pool_size, open=False,
                kwargs={"autocommit": True}, name="servletkit-store")
            await pool.open(wait=True)
            if self._pool is None and not self._closed:
                self._pool = pool
            else:
                await pool.close()
        if self._pool is None:
            raise StoreClosedError(
                f"the store {redacted(self.url)} is closed (the container stopped)")
        return self._pool

    async def close(self) -> None:
        """Close the pool's connections; the store is unusable after."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def processed_digest(self, txn_id: str) -> str | None:
        """The digest recorded for ``txn_id`` among the kept transactions, or ``None``."""
        async with (await self._get_pool()).connection() as conn:
            cursor = await conn.execute(
                "SELECT digest FROM transactions WHERE txn_id = %s", (txn_id,))
            row = await cursor.fetchone()
        return None if row is None else str(row[0])

    async def commit(self, batch: Batch, transaction: ProcessedTransaction | None = None) -> None:
        """One database transaction: the plugin writes, the audit records, the transaction."""
        batch.open = False
        writes = dict(batch.writes)
        audit = list(batch.audit)
        async with (await self._get_pool()).connection() as conn, conn.transaction():
            if transaction is not None:
                await self._record(conn, transaction)
            async with conn.cursor() as cursor:
                upserts = [(p, k, v) for (p, k), v in writes.items() if v is not None]
                deletes = [(p, k) for (p, k), v in writes.items() if v is None]
                if upserts:
                    await cursor.executemany(
                        "INSERT INTO plugin_data (plugin, key, value) VALUES (%s, %s, %s) "
                        "ON CONFLICT (plugin, key) DO UPDATE SET value = EXCLUDED.value",
                        upserts)
                if deletes:
                    await cursor.executemany(
                        "DELETE FROM plugin_data WHERE plugin = %s AND key = %s", deletes)
                if audit:
                    await cursor.executemany(
                        "INSERT INTO audit (at, plugin, hook, decision, event_id, room_id, "
                        "detail) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                        [(r.at, r.plugin, r.hook, r.decision, r.event_id, r.room_id, r.detail)
                         for r in audit])
                    await self._prune_audit(conn, len(audit))

    async def _record(self, conn: psycopg.AsyncConnection[Any],
                      transaction: ProcessedTransaction) -> None:
        # a reused id takes a new sequence value, so it counts as the newest
        await conn.execute(
            "INSERT INTO transactions (txn_id, seq, at, digest) "
            "VALUES (%s, nextval('transactions_seq'), %s, %s) ON CONFLICT (txn_id) DO UPDATE "
            "SET seq = EXCLUDED.seq, at = EXCLUDED.at, digest = EXCLUDED.digest",
            (transaction.txn_id, time.time(), transaction.digest))
        if not self._transactions_pruning.due():
            return
        # by rank, not by arithmetic on seq: a sequence has gaps (rolled back commits)
        await conn.execute(
            "DELETE FROM transactions WHERE seq <= (SELECT seq FROM transactions "
            "ORDER BY seq DESC OFFSET %s LIMIT 1)", (self.transactions_kept,))

    async def _prune_audit(self, conn: psycopg.AsyncConnection[Any], added: int) -> None:
        if not self._audit_pruning.due(added):
            return
        await conn.execute(
            "DELETE FROM audit WHERE id <= (SELECT id FROM audit "
            "ORDER BY id DESC OFFSET %s LIMIT 1)", (self.audit_kept,))

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        """One holder of ``name`` at a time among all instances: a session advisory lock,
        held on a pool connection, so the server releases it if this instance dies."""
        async with (await self._get_pool()).connection() as conn:
            await conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (name,))
            try:
                yield
            finally:
                # a broken connection's session is gone, and its locks with it
                if not conn.broken and not conn.closed:
                    await conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))",
                                       (name,))

    async def hold(self, name: str) -> AdvisoryHold | None:
        """Try the session advisory lock on ``name`` on a new connection of its own (kept
        while held, so a long hold takes nothing from the pool)."""
        await self._get_pool()  # migrated, and not closed
        conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        try:
            cursor = await conn.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (name,))
            row = await cursor.fetchone()
        except BaseException:
            await conn.close()
            raise
        if row is None or not row[0]:
            await conn.close()
            return None
        return AdvisoryHold(conn)

    async def get(self, plugin: str, key: str) -> str | None:
        """The committed JSON text of ``plugin``'s ``key``."""
        async with (await self._get_pool()).connection() as conn:
            cursor = await conn.execute(
                "SELECT value FROM plugin_data WHERE plugin = %s AND key = %s", (plugin, key))
            row = await cursor.fetchone()
        return None if row is None else str(row[0])

    async def update(self, plugin: str, key: str, change: Change[T]) -> T:
        """Read and write ``key`` in one database transaction under a transaction-level
        advisory lock on the key (a row lock cannot cover a key not yet stored)."""
        async with (await self._get_pool()).connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 1))",
                               (f"{plugin}:{key}",))
            cursor = await conn.execute(
                "SELECT value FROM plugin_data WHERE plugin = %s AND key = %s", (plugin, key))
            row = await cursor.fetchone()
            text, result = change(None if row is None else str(row[0]))
            if text is None:
                await conn.execute(
                    "DELETE FROM plugin_data WHERE plugin = %s AND key = %s", (plugin, key))
            else:
                await conn.execute(
                    "INSERT INTO plugin_data (plugin, key, value) VALUES (%s, %s, %s) "
                    "ON CONFLICT (plugin, key) DO UPDATE SET value = EXCLUDED.value",
                    (plugin, key, text))
        return result

    async def items(self, plugin: str, prefix: str = "") -> list[tuple[str, str]]:
        """The committed ``(key, JSON text)`` pairs of ``plugin`` whose key starts with
        ``prefix``, sorted by key (bytewise)."""
        async with (await self._get_pool()).connection() as conn:
            cursor = await conn.execute(
                "SELECT key, value FROM plugin_data WHERE plugin = %s "
                "AND starts_with(key, %s) ORDER BY key", (plugin, prefix))
            rows = await cursor.fetchall()
        return [(str(key), str(value)) for key, value in rows]

    async def audit_log(self, limit: int = 100) -> list[AuditRecord]:
        """The newest ``limit`` audit records, oldest first."""
        async with (await self._get_pool()).connection() as conn:
            cursor = await conn.execute(
                "SELECT plugin, hook, decision, event_id, room_id, detail, at FROM audit "
                "ORDER BY id DESC LIMIT %s", (limit,))
            rows = await cursor.fetchall()
        return [AuditRecord(*row) for row in reversed(rows)]

    async def count(self, table: str) -> int:
        """How many rows ``table`` (``transactions``, ``plugin_data``, ``audit``) holds."""
        if table not in ("transactions", "plugin_data", "audit"):
            raise ValueError(f"no table {table!r} in the store")
        async with (await self._get_pool()).connection() as conn:
            row = await (await conn.execute(f"SELECT count(*) FROM {table}")).fetchone()
        assert row is not None  # count(*) always returns a row
        return int(row[0])

    async def dump(self) -> StoreContents:
        """Everything the database holds (for ``servletkit store migrate``)."""
        async with (await self._get_pool()).connection() as conn, conn.transaction():
            transactions = await (await conn.execute(
                "SELECT txn_id, digest, at FROM transactions ORDER BY seq")).fetchall()
            data = await (await conn.execute(
                "SELECT plugin, key, value FROM plugin_data")).fetchall()
            audit = await (await conn.execute(
                "SELECT plugin, hook, decision, event_id, room_id, detail, at FROM audit "
                "ORDER BY id")).fetchall()
        return StoreContents(transactions=[tuple(row) for row in transactions],
                             data=[tuple(row) for row in data],
                             audit=[AuditRecord(*row) for row in audit])

    async def restore(self, contents: StoreContents) -> None:
        """Write ``contents`` into this empty database, in one transaction (order kept)."""
        async with (await self._get_pool()).connection() as conn, conn.transaction():
            await conn.execute("LOCK TABLE transactions, plugin_data, audit IN EXCLUSIVE MODE")
            for table in ("transactions", "plugin_data", "audit"):
                cursor = await conn.execute(f"SELECT 1 FROM {table} LIMIT 1")
                if await cursor.fetchone() is not None:
                    raise NotEmptyError(f"{redacted(self.url)} already holds {table}: "
                                        "restore into an empty store")
            async with conn.cursor() as cursor:
                await cursor.executemany(
                    "INSERT INTO transactions (txn_id, seq, at, digest) "
                    "VALUES (%s, nextval('transactions_seq'), %s, %s)",
                    [(txn_id, at, digest) for txn_id, digest, at in contents.transactions])
                await cursor.executemany(
                    "INSERT INTO plugin_data (plugin, key, value) VALUES (%s, %s, %s)",
                    contents.data)
                await cursor.executemany(
                    "INSERT INTO audit (at, plugin, hook, decision, event_id, room_id, "
                    "detail) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [(r.at, r.plugin, r.hook, r.decision, r.event_id, r.room_id, r.detail)
                     for r in contents.audit])
