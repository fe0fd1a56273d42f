"""The rooms the policy server serves: joined (or invited to), with their room versions.

Kept in the container's store (``[store]``), so every instance on one
PostgreSQL database serves the rooms any of them joined: written by
``servletkit policy join`` and by an accepted invite, read by the running
wire (``/sign`` needs a room's version to redact and hash its events). They
are plugin data of a name no plugin can take (:data:`NAMESPACE`), so
``servletkit store migrate`` carries them like the rest.

A ``rooms.json`` left in ``state_dir`` by an earlier version is imported into
the store at the first :meth:`Rooms.open` and renamed ``rooms.json.imported``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Final

import attrs

from servletkit.store.interface import Store
from servletkit.store.plugin import PluginStore

log = logging.getLogger("servletkit.policy_wire")

NAMESPACE: Final = "servletkit/policy_wire:rooms"
"""The rooms' "plugin" name in the store: a ``/`` is in no plugin's name (an entry point's)."""
ROOMS_FILE: Final = "rooms.json"
"""Where earlier versions kept the rooms, in ``state_dir``."""
IMPORTED_SUFFIX: Final = ".imported"
FRESH_S: Final = 30.0
"""A room read from the store is served from memory this long: another instance may
have left it (``/sign`` asks for every event; the store is read once per room and period)."""
UNKNOWN_FRESH_S: Final = 1.0
"""... and a room the store does not have is not asked about again for this long."""
MEMORY_ROOMS: Final = 10_000
"""At most this many rooms remembered (known or unknown) before the memory starts over."""


@attrs.frozen
class Room:
    """One room: its version, how we got in (``"joined"``, ``"invited"``), via which server."""

    room_id: str
    room_version: str
    membership: str
    via: str
    since_ms: int


def _room(room_id: str, value: Any) -> Room | None:
    try:
        return Room(room_id, **value)
    except TypeError:
        log.error("policy wire: the stored room %s is malformed (%r); not served", room_id,
                  value)
        return None


class Rooms:
    """The room list in ``store``, with a memory of the rooms ``/sign`` asked about;
    ``state_dir`` is the policy wire's (where an earlier ``rooms.json`` may be)."""

    def __init__(self, store: Store, state_dir: Path) -> None:
        self._data = PluginStore(store, NAMESPACE)
        self.state_dir = state_dir
        self._known: dict[str, tuple[Room | None, float]] = {}

    async def open(self) -> None:
        """Import a ``rooms.json`` from ``state_dir`` (an earlier version's), once: its rooms
        the store lacks are added, and the file is renamed ``rooms.json.imported``."""
        if not (path := self.state_dir / ROOMS_FILE).exists():
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            found = {room_id: Room(room_id, **entry) for room_id, entry in data.items()}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.error("policy wire: %s is unreadable (%s); not imported: fix or remove it",
                      path, exc)
            return
        stored = {room.room_id for room in await self.all()}
        for room in found.values():
            if room.room_id not in stored:
                await self._data.put(room.room_id, attrs.asdict(room, filter=_not_room_id))
        path.rename(path.with_name(ROOMS_FILE + IMPORTED_SUFFIX))
        log.warning("policy wire: imported %d room(s) from %s into the store (the file is "
                    "now %s%s)", len(found.keys() - stored), path, ROOMS_FILE, IMPORTED_SUFFIX)

    async def get(self, room_id: str) -> Room | None:
        """The room, or ``None`` if the policy server does not serve it (from memory while
        fresh: :data:`FRESH_S`, :data:`UNKNOWN_FRESH_S`)."""
        known = self._known.get(room_id)
        now = time.monotonic()
        if known is not None and now < known[1]:
            return known[0]
        room = _room(room_id, value) if (value := await self._data.get(room_id)) else None
        self._remember(room_id, room, now)
        return room

    async def all(self) -> list[Room]:
        """Every room served, oldest first (read from the store)."""
        rooms = [room for room_id, value in await self._data.items()
                 if (room := _room(room_id, value)) is not None]
        return sorted(rooms, key=lambda room: room.since_ms)

    async def add(self, room_id: str, room_version: str, membership: str, via: str) -> Room:
        """Record (or update) a room."""
        room = Room(room_id, room_version, membership, via, int(time.time() * 1000))
        await self._data.put(room_id, attrs.asdict(room, filter=_not_room_id))
        self._remember(room_id, room, time.monotonic())
        return room

    async def remove(self, room_id: str) -> None:
        """Forget a room (the policy server left or was removed)."""
        await self._data.delete(room_id)
        self._remember(room_id, None, time.monotonic())

    def _remember(self, room_id: str, room: Room | None, now: float) -> None:
        if len(self._known) >= MEMORY_ROOMS and room_id not in self._known:
            self._known.clear()  # bounded: callers may name any number of unknown rooms
        self._known[room_id] = (room, now + (FRESH_S if room else UNKNOWN_FRESH_S))



def _not_room_id(attribute: attrs.Attribute[Any], value: Any) -> bool:
    return attribute.name != "room_id"
