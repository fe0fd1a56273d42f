"""Events are built from client-event JSON, give it back, and reject malformed input."""

from __future__ import annotations

from typing import Any

import pytest

from servletkit import Ephemeral, Event
from servletkit.hooks.events import EventFormatError

MESSAGE: dict[str, Any] = {
    "event_id": "$abc", "room_id": "!r:hs", "type": "m.room.message", "sender": "@a:hs",
    "content": {"msgtype": "m.text", "body": "hi"}, "origin_server_ts": 1700000000000,
    "unsigned": {"age": 5}, "user_id": "@a:hs", "age": 5,
}


def test_round_trip_keeps_every_key() -> None:
    event = Event.from_json(MESSAGE)
    assert event.state_key is None and not event.is_state
    assert (event.wire, event.stage) == ("appservice", "after_store")
    assert event.to_json() == MESSAGE


def test_state_events_keep_an_empty_state_key() -> None:
    data = {**MESSAGE, "type": "m.room.topic", "state_key": "", "content": {"topic": "t"}}
    event = Event.from_json(data, wire="module")
    assert event.is_state and event.state_key == ""
    assert (event.wire, event.stage) == ("module", "before_store")
    assert event.to_json()["state_key"] == ""


def test_with_content_changes_only_the_content() -> None:
    event = Event.from_json(MESSAGE)
    changed = event.with_content({"body": "new"})
    assert changed.content == {"body": "new"}
    assert changed.event_id == event.event_id and event.content["body"] == "hi"


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"event_id": None}, "event_id", "must be str, got NoneType"),
        ({"content": "text"}, "content", "must be Mapping, got str"),
        ({"state_key": 3}, "state_key", "must be str, got int"),
        ({"origin_server_ts": "now"}, "origin_server_ts", "must be int, got str"),
        ({"unsigned": []}, "unsigned", "must be object, got list"),
    ],
)
def test_malformed_events_name_the_field(change: dict[str, Any], field: str, problem: str) -> None:
    with pytest.raises(EventFormatError) as info:
        Event.from_json({**MESSAGE, **change})
    assert (info.value.field, info.value.problem) == (field, problem)


def test_missing_field() -> None:
    data = dict(MESSAGE)
    del data["sender"]
    with pytest.raises(EventFormatError, match="sender: is missing"):
        Event.from_json(data)


def test_not_an_object() -> None:
    with pytest.raises(EventFormatError, match="must be an object"):
        Event.from_json(["not", "an", "event"])  # type: ignore[arg-type]


def test_ephemeral_from_typing_notification() -> None:
    data = {"type": "m.typing", "room_id": "!r:hs", "content": {"user_ids": ["@a:hs"]}}
    typing = Ephemeral.from_json(data)
    assert (typing.type, typing.room_id, typing.sender) == ("m.typing", "!r:hs", None)
    assert typing.content == {"user_ids": ["@a:hs"]} and typing.raw == data
