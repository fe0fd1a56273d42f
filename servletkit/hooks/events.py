"""The values a hook receives: Matrix events and ephemeral data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs

WireName = Literal["module", "appservice", "policy"]
"""Which wire brought an event to the plugins.

``"module"``: the homeserver's own module asks before storing it (Veto and
Modify take effect). ``"appservice"``: the homeserver pushed it after storing
it (a Veto can only be enforced afterwards, by redaction). ``"policy"``: a
homeserver asks the policy server before accepting it (Veto refuses it for
every server in the room; Modify cannot apply).
"""

Stage = Literal["before_store", "after_store"]
"""Where in the homeserver's lifecycle a hook sees an event, derived from its wire.

``"before_store"``: the homeserver asks before storing it (module and policy
wires); a decision takes effect. ``"after_store"``: the event is already stored
(appservice wire); a Veto can only be enforced afterwards, by redaction.
"""

_CLIENT_EVENT_KEYS = frozenset(
    {"event_id", "room_id", "type", "sender", "state_key", "content", "origin_server_ts",
     "unsigned"}
)


_EMPTY: dict[str, Any] = {}


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

    The event is a view over the JSON the homeserver sent (``json``, checked by
    :meth:`from_json`), with its ``content`` as a field of its own because
    plugins may replace it (:meth:`with_content`). ``event_id``, ``room_id``,
    ``type``, ``sender``, ``origin_server_ts``, ``state_key`` (``None`` for
    non-state events) and ``unsigned`` read from the JSON; ``extra`` gives the
    other top-level keys (``redacts``, ``age`` …). ``wire`` says which wire
    brought it (:data:`WireName`) and ``stage`` whether the homeserver has stored
    it yet (:data:`Stage`); neither is part of the JSON.

    Holding the JSON instead of copying each key into a field makes building an
    event cheap: the appservice wire builds one per event of every transaction.
    """

    json: Mapping[str, Any] = attrs.field(repr=False)
    content: Mapping[str, Any]
    wire: WireName = "appservice"

    @property
    def stage(self) -> Stage:
        return "after_store" if self.wire == "appservice" else "before_store"

    @property
    def event_id(self) -> str:
        return self.json["event_id"]  # type: ignore[no-any-return]

    @property
    def room_id(self) -> str:
        return self.json["room_id"]  # type: ignore[no-any-return]

    @property
    def type(self) -> str:
        return self.json["type"]  # type: ignore[no-any-return]

    @property
    def sender(self) -> str:
        return self.json["sender"]  # type: ignore[no-any-return]

    @property
    def origin_server_ts(self) -> int:
        return self.json.get("origin_server_ts", 0)  # type: ignore[no-any-return]

    @property
    def state_key(self) -> str | None:
        return self.json.get("state_key")

    @property
    def unsigned(self) -> Mapping[str, Any]:
        return self.json.get("unsigned") or {}

    @property
    def extra(self) -> dict[str, Any]:
        """The top-level keys that are not fields of a client event."""
        return {k: v for k, v in self.json.items() if k not in _CLIENT_EVENT_KEYS}

    @property
    def is_state(self) -> bool:
        """Whether this is a state event (it has a ``state_key``, possibly empty)."""
        return self.json.get("state_key") is not None

    def __repr__(self) -> str:
        return (f"Event(event_id={self.event_id!r}, room_id={self.room_id!r}, "
                f"type={self.type!r}, sender={self.sender!r}, state_key={self.state_key!r}, "
                f"content={self.content!r}, wire={self.wire!r})")

    @classmethod
    def from_json(cls, data: Any, wire: WireName = "appservice") -> Event:
        """Build an event from client-event JSON; raise :class:`EventFormatError` if ``data``
        (any parsed JSON) is not a client event.

        The event keeps ``data`` (not a copy) when it is a plain ``dict``: do not
        change it afterwards.
        """
        # Fast path for what a JSON parser produces (exact dict/str/int), checked with
        # `type() is`; anything else takes the path that accepts any Mapping and says
        # what is wrong.
        if type(data) is dict:
            try:
                content = data["content"]
                valid = (
                    type(data["event_id"]) is str and type(data["room_id"]) is str
                    and type(data["type"]) is str and type(data["sender"]) is str
                    and type(content) is dict
                )
            except KeyError:
                valid = False
            if valid:
                get = data.get
                state_key = get("state_key")
                if (
                    type(get("origin_server_ts", 0)) is int
                    and (state_key is None or type(state_key) is str)
                    and type(get("unsigned", _EMPTY)) is dict
                ):
                    return cls(data, content, wire)
        return cls._from_mapping(data, wire)

    @classmethod
    def _from_mapping(cls, data: Any, wire: WireName) -> Event:
        if not isinstance(data, Mapping):
            raise EventFormatError("event", f"must be an object, got {type(data).__name__}")
        for key in ("event_id", "room_id", "type", "sender"):
            _require(data, key, str)
        content = _require(data, "content", Mapping)
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
        return cls(dict(data), content, wire)

    def to_json(self) -> dict[str, Any]:
        """Give back the client-event JSON, with the current content."""
        data = dict(self.json)
        data["content"] = self.content
        data.setdefault("origin_server_ts", 0)
        data.setdefault("unsigned", {})
        return data

    def with_content(self, content: Mapping[str, Any]) -> Event:
        """Return a copy of this event with ``content`` replaced."""
        return Event(self.json, content, self.wire)


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
