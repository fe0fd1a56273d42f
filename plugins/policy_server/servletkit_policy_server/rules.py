"""Content rules: small objects with a name, each answering "why refuse this event?".

A rule's :meth:`Rule.check` returns the refusal's detail (a string) or ``None``.
The plugin turns a detail into ``Veto("<rule name>: <detail>")``, or, when the
rule (or the whole plugin) is in dry run, logs what would have been refused.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from servletkit import Event
from servletkit.store import PluginStore

MESSAGE_TYPES = frozenset({"m.room.message", "m.sticker", "m.room.encrypted"})
"""Event types the flood rule counts."""

USER_ID = re.compile(r"@[a-z0-9._=\-/+]+:[A-Za-z0-9.\-]+(?::\d+)?")


class Rule(Protocol):
    """A moderation rule: a ``name``, a ``dry_run`` flag and a ``check``."""

    name: str
    dry_run: bool

    def check(self, event: Event) -> str | None:
        """Why ``event`` breaks the rule, or ``None`` if it does not."""


def _texts(content: Mapping[str, Any]) -> list[str]:
    """The text fields of a message's content (``body``, ``formatted_body``)."""
    return [value for key in ("body", "formatted_body")
            if isinstance(value := content.get(key), str)]


class BlockedWords:
    """Refuse a message whose text holds a blocked word (whole word, any case) or regex match.

    ``words`` are plain words; ``patterns`` regular expressions. Both are
    compiled once, into a single regex.
    """

    name = "blocked_words"

    def __init__(self, words: Iterable[str], patterns: Iterable[str], dry_run: bool) -> None:
        alternatives = [rf"\b{re.escape(word)}\b" for word in words] + list(patterns)
        self.regex = re.compile("|".join(f"(?:{a})" for a in alternatives), re.IGNORECASE)
        self.dry_run = dry_run

    def check(self, event: Event) -> str | None:
        """The blocked text found in a message, if any."""
        if event.type != "m.room.message":
            return None
        for text in _texts(event.content):
            found = self.regex.search(text)
            if found:
                return f"the message contains blocked text {found.group(0)!r}"
        return None


class MaxMentions:
    """Refuse a message that mentions more than ``limit`` distinct users (or ``@room``)."""

    name = "max_mentions"

    def __init__(self, limit: int, dry_run: bool) -> None:
        self.limit = limit
        self.dry_run = dry_run

    def check(self, event: Event) -> str | None:
        """How many users the message mentions, when over the limit."""
        if event.type != "m.room.message":
            return None
        mentioned: set[str] = set()
        mentions = event.content.get("m.mentions")
        if isinstance(mentions, Mapping):
            ids = mentions.get("user_ids")
            if isinstance(ids, list):
                mentioned.update(i for i in ids if isinstance(i, str))
            if mentions.get("room") is True:
                mentioned.add("@room")
        for text in _texts(event.content):
            mentioned.update(USER_ID.findall(text))
        if len(mentioned) > self.limit:
            return f"the message mentions {len(mentioned)} users (at most {self.limit})"
        return None


class Flood:
    """Refuse the messages past ``messages`` per ``seconds`` of one sender in a room,
    and (when ``room_messages`` is set) past ``room_messages`` per ``seconds`` in a room.

    The counts live in the plugin's store (``context.store``), so instances sharing a
    store share them and a restart keeps them. Each window is a list of
    ``[time, event_id]`` under ``flood/sender/ROOM SENDER`` and ``flood/room/ROOM``:
    an event that reaches the plugin by several wires (the module wire, then the
    appservice wire once stored) counts once, and keeps the verdict it had. Windows
    of senders gone quiet are swept at most every ``seconds`` (and a minute).
    Concurrent instances may both count a message as the n-th: the limit is then
    enforced one message late, never refused twice.
    """

    name = "flood"

    def __init__(self, messages: int, seconds: float, room_messages: int | None,
                 dry_run: bool, clock: Callable[[], float] = time.time) -> None:
        self.messages = messages
        self.seconds = seconds
        self.room_messages = room_messages
        self.dry_run = dry_run
        self.clock = clock
        self._swept = clock()

    @staticmethod
    def counts(event: Event) -> bool:
        """Whether the rule counts ``event`` (messages only)."""
        return event.type in MESSAGE_TYPES

    async def _count(self, store: PluginStore, key: str, event_id: str, now: float) -> int:
        """Add ``event_id`` to the window under ``key``; its place in the window."""
        window = [entry for entry in await store.get(key, [])
                  if entry[0] > now - self.seconds]
        for place, (_, seen) in enumerate(window, 1):
            if seen == event_id:
                return place
        window.append([now, event_id])
        await store.put(key, window)
        return len(window)

    async def _sweep(self, store: PluginStore, now: float) -> None:
        """Forget the windows whose newest message is older than ``seconds``."""
        self._swept = now
        for key, window in await store.items("flood/"):
            if not window or window[-1][0] <= now - self.seconds:
                await store.delete(key)

    async def check(self, event: Event, store: PluginStore) -> str | None:
        """Count the message; the limit it goes over, if any."""
        now = self.clock()
        if now - self._swept > max(self.seconds, 60.0):
            await self._sweep(store, now)
        count = await self._count(store, f"flood/sender/{event.room_id} {event.sender}",
                                  event.event_id, now)
        room = 0 if self.room_messages is None else await self._count(
            store, f"flood/room/{event.room_id}", event.event_id, now)
        if count > self.messages:
            return (f"{event.sender} sent {count} messages in {self.seconds:g} s "
                    f"(at most {self.messages})")
        if self.room_messages is not None and room > self.room_messages:
            return (f"the room had {room} messages in {self.seconds:g} s "
                    f"(at most {self.room_messages})")
        return None


class EventSize:
    """Refuse an event whose JSON is larger than ``max_bytes``."""

    name = "event_size"

    def __init__(self, max_bytes: int, dry_run: bool) -> None:
        self.max_bytes = max_bytes
        self.dry_run = dry_run

    def check(self, event: Event) -> str | None:
        """The event's size, when over the limit."""
        size = len(json.dumps(event.to_json(), separators=(",", ":")).encode())
        if size > self.max_bytes:
            return f"the event is {size} bytes (at most {self.max_bytes})"
        return None
