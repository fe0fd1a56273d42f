"""Joins and invites in one round trip: the membership event decided with its action.

Synapse asks two callbacks for a local join: ``user_may_join_room``, then
``check_event_allowed`` for the membership event it builds; likewise
``user_may_invite`` and the invite event. Each was a round trip to the
container. Instead, the module sends the action's request with a ``then``: the
membership event it *forecasts* (the sender, the target, the room, and the
content Synapse will build: the membership and the target's profile, its
``displayname`` and ``avatar_url``). The container runs the action's hook and,
unless it refused, ``on_send_event`` on that event, and answers both in one frame.

The event's answer is kept here, briefly (:data:`FORECAST_TTL_S`), and answers
the ``check_event_allowed`` that follows only if Synapse's event is the one
forecast: same sender, target, room, membership and content (so the content a
plugin judged is exactly what Synapse stores). Anything else, a ``reason``, a
per-room display name, a restricted room's ``join_authorised_via_users_server``,
a profile changed in between, misses and is asked on its own as before. A
remote join (Synapse joins over federation and calls no ``check_event_allowed``)
leaves its forecast unused; it expires. A forecast is used at most once.

What a plugin sees differently: the forecast event's ``event_id`` is provisional
(``$forecast-…``, unique; Synapse has not built the event yet) and its
``origin_server_ts`` is the time of the forecast.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

FORECAST_TTL_S: Final = 5.0
"""How long a forecast answer waits for its membership event (Synapse builds it within
milliseconds of the action's callback, unless a room's lock holds it)."""

MAX_FORECASTS: Final = 4096
"""Forecasts kept at most (the oldest go first): remote joins never use theirs."""

Key = tuple[str, str, str, str]
"""(sender, state key, room, membership) of a membership event."""


def forecast_event(sender: str, target: str, room_id: str, membership: str,
                   profile: Any) -> dict[str, Any]:
    """The membership event Synapse will build, in the client format the container reads.

    ``profile`` is the target's :class:`synapse.module_api.ProfileInfo`: Synapse adds
    its display name and avatar to a join's or invite's content when set.
    """
    content: dict[str, Any] = {"membership": membership}
    if profile.display_name is not None:
        content["displayname"] = profile.display_name
    if profile.avatar_url is not None:
        content["avatar_url"] = profile.avatar_url
    return {
        "event_id": f"$forecast-{uuid.uuid4().hex}",
        "room_id": room_id,
        "type": "m.room.member",
        "sender": sender,
        "state_key": target,
        "content": content,
        "origin_server_ts": int(time.time() * 1000),
        "unsigned": {},
    }


@attrs.frozen
class Forecast:
    """The answer frame to a forecast membership event, until ``expires``."""

    content: Mapping[str, Any]
    answer: Mapping[str, Any]
    expires: float


class Forecasts:
    """The forecast membership events' answers, waiting for Synapse's events."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._waiting: dict[Key, Forecast] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def expect(self, event: Mapping[str, Any], answer: Mapping[str, Any]) -> None:
        """Keep ``answer`` (an answer frame) for the forecast ``event``."""
        waiting = self._waiting
        key = (event["sender"], event["state_key"], event["room_id"],
               event["content"]["membership"])
        waiting.pop(key, None)  # re-inserted last: the dict stays in order of expiry
        while len(waiting) >= MAX_FORECASTS:
            del waiting[next(iter(waiting))]
        waiting[key] = Forecast(event["content"], answer, self._clock() + FORECAST_TTL_S)

    def take(self, sender: str, state_key: str, room_id: str,
             content: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The answer for this membership event if it is the one forecast (and not
        expired), else ``None``; either way the forecast is gone."""
        membership = content.get("membership")
        if type(membership) is not str:
            return None
        forecast = self._waiting.pop((sender, state_key, room_id, membership), None)
        if forecast is None or forecast.expires < self._clock():
            return None
        return forecast.answer if content == forecast.content else None
