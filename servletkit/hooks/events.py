"""The values a hook receives: Matrix events and ephemeral data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs

Stage = Literal["before_store", "after_store"]
"""Where in the homeserver's lifecycle a hook sees an event.

``"before_store"``: the homeserver asks before storing it (module and policy
wires); a decision takes effect. ``"after_store"``: the event is already stored
(appservice wire); a Veto can only be enforced afterwards, by redaction.
"""

_CLIENT_EVENT_KEYS = frozenset(
    {"event_id", "room_id", "type", "sender", "state_key", "content", "origin_server_ts",
     "unsigned"}
)
_CLIENT_EVENT_KEY_LIST = tuple(_CLIENT_EVENT_KEYS)


class EventFormatError(ValueError):
    """A JSON object is not a Matrix client event; ``field`` names the offending key."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _require(data: Mapping[str, Any], key: str, kind: type) -> Any:
    if key not in data:
        raise EventFormatError(key, "is missing")
    value = data[key]
    if not isinstance(value, kind):
        raise EventFormatError(key, f"must be {kind.__name__}, got {type(value).__name__}")
    return value


@attrs.frozen(slots=True)
class Event:
    """A Matrix room event in the client-server format (a *ClientEvent*).

    ``state_key`` is ``None`` for non-state events. ``extra`` keeps any other
    top-level keys the homeserver sent (``redacts``, ``age``, ``user_id`` …) so
    :meth:`to_json` gives back what :meth:`from_json` was given. ``stage`` says
    whether the homeserver has stored the event yet (see :data:`Stage`); it is
    not part of the JSON.
    """

    event_id: str
    room_id: str
    type: str
    sender: str
    content: Mapping[str, Any]
    origin_server_ts: int = 0
    state_key: str | None = None
    unsigned: Mapping[str, Any] = attrs.field(factory=dict)
    extra: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    stage: Stage = "after_store"

    @property
    def is_state(self) -> bool:
        """Whether this is a state event (it has a ``state_key``, possibly empty)."""
        return self.state_key is not None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], stage: Stage = "after_store") -> Event:
        """Build an event from client-event JSON; raise :class:`EventFormatError` if malformed."""
        # Fast path for what a JSON parser produces (exact dict/str/int), checked with
        # `type() is`; anything else takes the path that accepts any Mapping and says
        # what is wrong. Appservice transactions build 100 events per request this way.
        if type(data) is dict:
            try:
                event_id, room_id = data["event_id"], data["room_id"]
                kind, sender, content = data["type"], data["sender"], data["content"]
            except KeyError:
                return cls._from_mapping(data, stage)
            get = data.get
            state_key, unsigned = get("state_key"), get("unsigned")
            origin_server_ts = get("origin_server_ts", 0)
            if (
                type(event_id) is str and type(room_id) is str and type(kind) is str
                and type(sender) is str and type(content) is dict
                and type(origin_server_ts) is int
                and (state_key is None or type(state_key) is str)
                and (type(unsigned) is dict or (unsigned is None and "unsigned" not in data))
            ):
                extra = data.copy()
                for key in _CLIENT_EVENT_KEY_LIST:
                    extra.pop(key, None)
                return cls(event_id, room_id, kind, sender, content, origin_server_ts, state_key,
                           {} if unsigned is None else unsigned, extra, stage)
        return cls._from_mapping(data, stage)

    @classmethod
    def _from_mapping(cls, data: Mapping[str, Any], stage: Stage) -> Event:
        if not isinstance(data, Mapping):
            raise EventFormatError("event", f"must be an object, got {type(data).__name__}")
        state_key = data.get("state_key")
        if state_key is not None and not isinstance(state_key, str):
            raise EventFormatError("state_key", f"must be str, got {type(state_key).__name__}")
        origin_server_ts = data.get("origin_server_ts", 0)
        if not isinstance(origin_server_ts, int) or isinstance(origin_server_ts, bool):
            raise EventFormatError(
                "origin_server_ts", f"must be int, got {type(origin_server_ts).__name__}"
            )
        unsigned = data.get("unsigned", {})
        if not isinstance(unsigned, Mapping):
            raise EventFormatError("unsigned", f"must be object, got {type(unsigned).__name__}")
        return cls(
            event_id=_require(data, "event_id", str),
            room_id=_require(data, "room_id", str),
            type=_require(data, "type", str),
            sender=_require(data, "sender", str),
            content=_require(data, "content", Mapping),
            origin_server_ts=origin_server_ts,
            state_key=state_key,
            unsigned=unsigned,
            extra={k: v for k, v in data.items() if k not in _CLIENT_EVENT_KEYS},
            stage=stage,
        )

    def to_json(self) -> dict[str, Any]:
        """Give back the client-event JSON (``state_key`` only for state events)."""
        data: dict[str, Any] = dict(self.extra)
        data.update(
            event_id=self.event_id,
            room_id=self.room_id,
            type=self.type,
            sender=self.sender,
            content=self.content,
            origin_server_ts=self.origin_server_ts,
            unsigned=self.unsigned,
        )
        if self.state_key is not None:
            data["state_key"] = self.state_key
        return data

    def with_content(self, content: Mapping[str, Any]) -> Event:
        """Return a copy of this event with ``content`` replaced."""
        return attrs.evolve(self, content=content)


@attrs.frozen(slots=True)
class Ephemeral:
    """Data that is not stored in a room's history: typing, receipts, presence, to-device.

    ``type`` is the Matrix type (``m.typing``, ``m.receipt``, ``m.presence``, or a
    to-device message type); ``room_id`` and ``sender`` are set when the data has
    them; ``raw`` is the whole JSON object as the homeserver sent it.
    """

    type: str
    content: Mapping[str, Any]
    room_id: str | None = None
    sender: str | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Ephemeral:
        """Build from an ephemeral or to-device JSON object; raise :class:`EventFormatError`."""
        if not isinstance(data, Mapping):
            raise EventFormatError("ephemeral", f"must be an object, got {type(data).__name__}")
        content = data.get("content", {})
        if not isinstance(content, Mapping):
            raise EventFormatError("content", f"must be object, got {type(content).__name__}")
        room_id, sender = data.get("room_id"), data.get("sender")
        return cls(
            type=_require(data, "type", str),
            content=content,
            room_id=room_id if isinstance(room_id, str) else None,
            sender=sender if isinstance(sender, str) else None,
            raw=data,
        )
