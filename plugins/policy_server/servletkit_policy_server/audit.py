"""The plugin's audit log: every refusal and every dry-run would-be refusal, with the rule
that fired, kept in the plugin's store (``context.store``) so that it survives a restart
and every instance on one store sees the same log.

Each record is one key ``audit/<nanoseconds><random>``, so keys sort by time and two
instances never write the same key. The log keeps the newest ``kept`` records: every
:data:`TRIM_EVERY` writes, the older ones are deleted (so it briefly holds up to
``kept + TRIM_EVERY``).
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal

import attrs

from servletkit.store import PluginStore

PREFIX = "audit/"
TRIM_EVERY = 50

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
    """The bounded log in a plugin store."""

    def __init__(self, kept: int) -> None:
        self.kept = kept
        self._writes = 0

    async def record(self, store: PluginStore, decision: Decision) -> None:
        """Keep ``decision``; now and then forget the oldest past ``kept``."""
        await store.put(f"{PREFIX}{time.time_ns():020d}{secrets.token_hex(3)}",
                        decision.to_json())
        self._writes += 1
        if self._writes % TRIM_EVERY == 0:
            for key, _ in (await store.items(PREFIX))[:-self.kept]:
                await store.delete(key)

    async def newest(self, store: PluginStore, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` records (at most ``kept``), oldest first."""
        records = [value for _, value in await store.items(PREFIX)]
        return records[-min(limit, self.kept):]
