"""Events for plugin tests: messages, state, joins and invites, as a homeserver sends them.

Each takes the client-event fields it is about; ``wire`` says which wire brought
it (``"module"``: before it is stored, the default; ``"appservice"``: stored).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from servletkit.hooks.events import Event, WireName

_ids = itertools.count(1)

ROOM = "!room:localhost"
ALICE = "@alice:localhost"


def _event(type: str, content: Mapping[str, Any], sender: str, room_id: str,
           wire: WireName, **fields: Any) -> Event:
    data = {"event_id": f"$kit{next(_ids)}", "room_id": room_id, "sender": sender,
            "origin_server_ts": 0, **fields, "type": type, "content": dict(content)}
    return Event.from_json(data, wire=wire)


def message(body: str, *, sender: str = ALICE, room_id: str = ROOM, msgtype: str = "m.text",
            wire: WireName = "module", **content: Any) -> Event:
    """An ``m.room.message`` with ``body`` (and any more ``content`` keys)."""
    return _event("m.room.message", {"msgtype": msgtype, "body": body, **content},
                  sender, room_id, wire)


def state(type: str, content: Mapping[str, Any] | None = None, *, state_key: str = "",
          sender: str = ALICE, room_id: str = ROOM, wire: WireName = "module") -> Event:
    """A state event, e.g. ``state("m.room.topic", {"topic": "cats"})``."""
    return _event(type, content or {}, sender, room_id, wire, state_key=state_key)


def join(user_id: str = ALICE, room_id: str = ROOM, *, wire: WireName = "module") -> Event:
    """``user_id``'s join: an ``m.room.member`` event with ``membership: join``."""
    return state("m.room.member", {"membership": "join"}, state_key=user_id, sender=user_id,
                 room_id=room_id, wire=wire)


def invite(inviter_id: str, invitee_id: str, room_id: str = ROOM, *,
           wire: WireName = "module") -> Event:
    """``inviter_id`` inviting ``invitee_id``: ``m.room.member``, ``membership: invite``."""
    return state("m.room.member", {"membership": "invite"}, state_key=invitee_id,
                 sender=inviter_id, room_id=room_id, wire=wire)
