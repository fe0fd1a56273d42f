"""The plugin's audit log: every refusal and every dry-run would-be refusal, with the rule
that fired, kept in the plugin's store (``context.store``) so that it survives a restart
and every instance on one store sees the same log.

Each record is one key ``audit/<nanoseconds><random>``, so keys sort by time and two
instances never write the same key. Records are buffered and written in batches
(:class:`AuditLog`), so a refusal does not wait for a database commit. The log keeps the
newest ``kept`` records: every :data:`TRIM_EVERY` records written, the older ones are
deleted (so it briefly holds up to ``kept + TRIM_EVERY``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Any, Literal

import attrs

from servletkit.store import PluginStore

PREFIX = "audit/"
TRIM_EVERY = 50
FLUSH_SECONDS = 0.2
"""The longest a decision's record waits in the buffer (bar a failing store)."""
FLUSH_RECORDS = 100
"""A buffer this full is written at once."""
BUFFER_BOUND = 10_000
"""A buffer this full is written by the decision that fills it (backpressure)."""

Outcome = Literal["refused", "would refuse"]


@attrs.frozen
class Decision:
    """One decision: which rule fired about what, and whether it refused (or, in dry run,
    would have)."""

    rule: str
    outcome: Outcome
    subject: str
    detail: str
    wire: str | None = None
    event_id: str | None = None
    room_id: str | None = None
    at: float = attrs.field(factory=time.time)

    def to_json(self) -> dict[str, Any]:
        """The record as stored and as the admin route shows it."""
        return attrs.asdict(self)


class AuditLog:
    """The bounded log in a plugin store, written behind the decisions.

    :meth:`record` only buffers; between :meth:`start` and :meth:`stop` a task writes
    the buffer in one commit every :data:`FLUSH_SECONDS`, or as soon as it holds
    :data:`FLUSH_RECORDS` records, and :meth:`stop` writes what is left. So a raid's
    refusals cost a dict insert each, not a database commit. A buffer that reaches
    :data:`BUFFER_BOUND` (the store slower than the refusals) is written by the
    decision itself, which then waits for the store; outside start/stop every
    record is written at once.
    """

    def __init__(self, kept: int) -> None:
        self.kept = kept
        self._written = 0
        self._pending: dict[str, dict[str, Any]] = {}
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

    def start(self, store: PluginStore, log: logging.Logger) -> None:
        """Start writing the buffer to ``store`` in the background."""
        self._flusher = asyncio.create_task(self._flushing(store, log))

    async def stop(self, store: PluginStore) -> None:
        """Stop the background writes and write what is buffered."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        await self.flush(store)

    async def record(self, store: PluginStore, decision: Decision) -> None:
        """Keep ``decision`` (buffered while started)."""
        self._pending[f"{PREFIX}{time.time_ns():020d}{secrets.token_hex(3)}"] = (
            decision.to_json())
        if self._flusher is None or len(self._pending) >= BUFFER_BOUND:
            await self.flush(store)
        elif len(self._pending) >= FLUSH_RECORDS:
            self._wake.set()

    async def flush(self, store: PluginStore) -> None:
        """Write the buffered records in one commit; every :data:`TRIM_EVERY` records
        written, forget (in the same commit) the oldest past ``kept``. On a failure the
        records stay buffered for the next flush."""
        pending, self._pending = self._pending, {}
        if not pending:
            return
        forget: list[str] = []
        if self._written + len(pending) >= TRIM_EVERY:
            keys = sorted([key for key, _ in await store.items(PREFIX)] + list(pending))
            forget = keys[:-self.kept]
            for key in forget:
                pending.pop(key, None)
        try:
            await store.put_many(pending, delete=forget)
        except BaseException:
            self._pending = pending | self._pending
            raise
        self._written = 0 if forget else self._written + len(pending)

    async def _flushing(self, store: PluginStore, log: logging.Logger) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FLUSH_SECONDS)
            self._wake.clear()
            try:
                await self.flush(store)
            except Exception:
                log.exception("policy_server: writing %d audit records failed; kept for the "
                              "next try", len(self._pending))

    async def newest(self, store: PluginStore, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` records (at most ``kept``), oldest first, buffered ones
        included."""
        records = dict(await store.items(PREFIX)) | self._pending
        return [records[key] for key in sorted(records)][-min(limit, self.kept):]
