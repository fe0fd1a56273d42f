"""Rules that remember: they count or note events in the plugin's store
(``context.store``), so instances sharing a store share what they remember and a
restart keeps it.

A :class:`StoredRule` has ``counts(event)`` (cheap, synchronous: whether it looks
at the event) and ``await check(event, store)``. Counts are time windows, lists of
``[time, event_id]`` (:class:`Windows`): an event that reaches the plugin by
several wires (the module wire, then the appservice wire once stored) counts once
and keeps the verdict it had. A window is counted in with one atomic store update,
so instances sharing a store enforce a limit exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from servletkit import Event
from servletkit.store import PluginStore

MESSAGE_TYPES = frozenset({"m.room.message", "m.sticker", "m.room.encrypted"})
"""Event types the flood rule counts."""

MEDIA_MSGTYPES = frozenset({"m.image", "m.video", "m.audio", "m.file"})


class StoredRule(Protocol):
    """A rule that keeps state in the store."""

    name: str
    dry_run: bool

    def counts(self, event: Event) -> bool:
        """Whether the rule looks at ``event`` at all."""

    async def check(self, event: Event, store: PluginStore) -> str | None:
        """Why ``event`` breaks the rule, or ``None``; may write to ``store``."""


class Windows:
    """Sliding windows of ``seconds`` in a store, one list per key under ``prefix``.

    Windows gone quiet are swept at most every ``seconds`` (and a minute).
    """

    def __init__(self, prefix: str, seconds: float, clock: Callable[[], float]) -> None:
        self.prefix = prefix
        self.seconds = seconds
        self.clock = clock
        self._swept = clock()

    async def count(self, store: PluginStore, key: str, event_id: str) -> int:
        """Add ``event_id`` to the window ``key`` (once); its place in the window.

        One atomic :meth:`~servletkit.store.PluginStore.update`, so instances counting
        in one window at once each get a place of their own."""
        now = self.clock()
        if now - self._swept > max(self.seconds, 60.0):
            self._swept = now
            for old_key, _ in await store.items(self.prefix):
                await store.update(old_key, lambda old: (
                    None if not old or old[-1][0] <= now - self.seconds else old, None))

        def add(old: list[list[Any]] | None) -> tuple[list[list[Any]], int]:
            window = [entry for entry in old or () if entry[0] > now - self.seconds]
            for place, (_, seen) in enumerate(window, 1):
                if seen == event_id:
                    return window, place
            window.append([now, event_id])
            return window, len(window)

        return await store.update(self.prefix + key, add)


class Flood:
    """Refuse the messages past ``messages`` per ``seconds`` of one sender in a room,
    and (when ``room_messages`` is set) past ``room_messages`` per ``seconds`` in a room.
    Windows: ``flood/sender/ROOM SENDER`` and ``flood/room/ROOM``, after ``scope`` (a
    community's windows are its own: each sweeps its windows by its own ``seconds``)."""

    name = "flood"

    def __init__(self, messages: int, seconds: float, room_messages: int | None,
                 dry_run: bool, clock: Callable[[], float] = time.time, scope: str = "") -> None:
        self.messages = messages
        self.seconds = seconds
        self.room_messages = room_messages
        self.dry_run = dry_run
        self.windows = Windows(f"{scope}flood/", seconds, clock)

    def counts(self, event: Event) -> bool:
        """Messages only."""
        return event.type in MESSAGE_TYPES

    async def check(self, event: Event, store: PluginStore) -> str | None:
        """Count the message; the limit it goes over, if any."""
        count = await self.windows.count(store, f"sender/{event.room_id} {event.sender}",
                                         event.event_id)
        room = 0 if self.room_messages is None else await self.windows.count(
            store, f"room/{event.room_id}", event.event_id)
        if count > self.messages:
            return (f"{event.sender} sent {count} messages in {self.seconds:g} s "
                    f"(at most {self.messages})")
        if self.room_messages is not None and room > self.room_messages:
            return (f"the room had {room} messages in {self.seconds:g} s "
                    f"(at most {self.room_messages})")
        return None


class JoinWave:
    """Refuse the joins past ``joins`` per ``seconds`` in a room (a raid), whichever wire
    brings the join event. Window: ``join_wave/ROOM`` after ``scope`` (as :class:`Flood`)."""

    name = "join_wave"

    def __init__(self, joins: int, seconds: float, dry_run: bool,
                 clock: Callable[[], float] = time.time, scope: str = "") -> None:
        self.joins = joins
        self.seconds = seconds
        self.dry_run = dry_run
        self.windows = Windows(f"{scope}join_wave/", seconds, clock)

    def counts(self, event: Event) -> bool:
        """Join events of the sender itself."""
        return (event.type == "m.room.member" and event.state_key == event.sender
                and event.content.get("membership") == "join")

    async def check(self, event: Event, store: PluginStore) -> str | None:
        """Count the joiner (once per window: one join reaches the plugin on several
        wires, and on the module wire first as a forecast with a provisional event id);
        the limit it goes over, if any."""
        count = await self.windows.count(store, event.room_id, event.sender)
        if count > self.joins:
            return (f"{count} joins in {self.seconds:g} s (at most {self.joins}): "
                    f"a join wave")
        return None


class MediaFirst:
    """Refuse a media message (image, video, audio, file, sticker) from a sender who has
    not yet sent a text message in the room. Notes: ``spoke/ROOM SENDER``."""

    name = "media_first"

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run

    def counts(self, event: Event) -> bool:
        """Messages and stickers."""
        return event.type in ("m.room.message", "m.sticker")

    async def check(self, event: Event, store: PluginStore) -> str | None:
        """Note a text message; refuse media before one."""
        key = f"spoke/{event.room_id} {event.sender}"
        media = event.type == "m.sticker" or event.content.get("msgtype") in MEDIA_MSGTYPES
        if not media:
            if not await store.get(key):
                await store.put(key, True)
            return None
        if await store.get(key):
            return None
        return f"{event.sender}'s first message in the room is media"
