"""The rooms the policy server serves: joined (or invited to), with their room versions.

Kept in ``rooms.json`` in the policy wire's ``state_dir``: written by
``servletkit policy join`` and by an accepted invite, read by the running
wire (``/sign`` needs a room's version to redact and hash its events).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import attrs

from servletkit.files import write_private

log = logging.getLogger("servletkit.policy_wire")

ROOMS_FILE: Final = "rooms.json"


@attrs.frozen
class Room:
    """One room: its version, how we got in (``"joined"``, ``"invited"``), via which server."""

    room_id: str
    room_version: str
    membership: str
    via: str
    since_ms: int


class Rooms:
    """The room list, re-read when its file changes (another process may have joined)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / ROOMS_FILE
        self._rooms: dict[str, Room] = {}
        self._mtime: int | None = None

    def _refresh(self) -> None:
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            self._rooms, self._mtime = {}, None
            return
        if mtime == self._mtime:
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self._rooms = {room_id: Room(room_id, **entry) for room_id, entry in data.items()}
        except (OSError, ValueError, TypeError) as exc:
            log.error("policy wire: %s is unreadable (%s); serving no rooms", self.path, exc)
            self._rooms = {}
        self._mtime = mtime

    def get(self, room_id: str) -> Room | None:
        """The room, or ``None`` if the policy server does not serve it.

        The file is looked at again only for a room not known yet (``/sign`` asks for
        every event: no system call on the hot path): rooms are added by ``servletkit
        policy join`` in another process, but removed only by the running wire itself
        (one container per ``state_dir``)."""
        if (room := self._rooms.get(room_id)) is not None:
            return room
        self._refresh()
        return self._rooms.get(room_id)

    def __iter__(self) -> Iterator[Room]:
        self._refresh()
        return iter(sorted(self._rooms.values(), key=lambda room: room.since_ms))

    def add(self, room_id: str, room_version: str, membership: str, via: str) -> Room:
        """Record (or update) a room and write the file."""
        self._refresh()
        room = Room(room_id, room_version, membership, via, int(time.time() * 1000))
        self._rooms[room_id] = room
        self._write()
        return room

    def remove(self, room_id: str) -> None:
        """Forget a room (the policy server left or was removed)."""
        self._refresh()
        if self._rooms.pop(room_id, None) is not None:
            self._write()

    def _write(self) -> None:
        data: dict[str, Any] = {room.room_id: attrs.asdict(room, filter=lambda a, v: a.name
                                                             != "room_id")
                                for room in self._rooms.values()}
        write_private(self.path, json.dumps(data, indent=2))
        self._mtime = os.stat(self.path).st_mtime_ns
