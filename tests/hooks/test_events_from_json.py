"""Event.from_json: the fast path for parsed JSON and the general path agree."""

from __future__ import annotations

import types

import pytest

from servletkit.hooks.events import Event, EventFormatError

EVENT = {
    "event_id": "$e", "room_id": "!r:x", "type": "m.room.message", "sender": "@a:x",
    "content": {"body": "hi"}, "origin_server_ts": 5, "unsigned": {"age": 1},
    "age": 1, "user_id": "@a:x",
}


@pytest.mark.parametrize("data", [
    EVENT,
    {**EVENT, "state_key": ""},
    {k: v for k, v in EVENT.items() if k not in ("unsigned", "origin_server_ts")},
])
def test_dict_and_mapping_give_the_same_event(data):
    """A plain dict (fast path) and a read-only mapping (general path) build equal events."""
    fast = Event.from_json(data)
    general = Event.from_json(types.MappingProxyType(data))
    assert fast == general
    assert fast.to_json() == {**data, "unsigned": data.get("unsigned", {}),
                              "origin_server_ts": data.get("origin_server_ts", 0)}
    assert fast.extra == {"age": 1, "user_id": "@a:x"}


@pytest.mark.parametrize(("change", "field", "problem"), [
    ({"event_id": None}, "event_id", "must be str, got NoneType"),
    ({"content": []}, "content", "must be Mapping, got list"),
    ({"origin_server_ts": True}, "origin_server_ts", "must be int, got bool"),
    ({"origin_server_ts": 1.5}, "origin_server_ts", "must be int, got float"),
    ({"state_key": 3}, "state_key", "must be str, got int"),
    ({"unsigned": None}, "unsigned", "must be object, got NoneType"),
])
def test_malformed_fields_are_named(change, field, problem):
    """A wrong type is reported with the field and what was got."""
    with pytest.raises(EventFormatError) as info:
        Event.from_json({**EVENT, **change})
    assert (info.value.field, info.value.problem) == (field, problem)


def test_missing_field_is_named():
    """A missing required field is reported by name."""
    with pytest.raises(EventFormatError, match="sender: is missing"):
        Event.from_json({k: v for k, v in EVENT.items() if k != "sender"})
