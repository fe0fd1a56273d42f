"""Joins and invites in one round trip: the forecast membership event and its answer."""

from __future__ import annotations

from typing import Any

import pytest
from synapse.events import EventBase
from synapse.module_api import NOT_SPAM
from synapse.module_api.errors import SynapseError

from servletkit.synapse.forecast import FORECAST_TTL_S, MAX_FORECASTS, Forecasts, forecast_event
from tests.module_wire.test_module import DOWN, VETO, event, module, run

ROOM = "!r:local.example"
ALICE = "@alice:local.example"
BOB = "@bob:local.example"


def member(sender: str, target: str, membership: str, **content: Any) -> EventBase:
    """Synapse's membership event, with ``target``'s profile (its localpart as the name)."""
    name = target[1:].split(":")[0]
    return event(sender, type="m.room.member", state_key=target,
                 content={"membership": membership, "displayname": name, **content})


class TestJoin:
    def test_one_request_answers_both_callbacks(self) -> None:
        """A join asks once, with the forecast join event; its check_event_allowed asks nothing."""
        instance, client = module({"then": {"id": 1}})
        assert run(instance.user_may_join_room(ALICE, ROOM, False)) is NOT_SPAM
        [(op, fields)] = client.requests
        assert op == "join"
        assert fields["then"]["op"] == "event"
        forecast = fields["then"]["event"]
        assert {k: forecast[k] for k in ("type", "sender", "state_key", "room_id", "content")} == {
            "type": "m.room.member", "sender": ALICE, "state_key": ALICE, "room_id": ROOM,
            "content": {"membership": "join", "displayname": "alice"}}
        assert run(instance.check_event_allowed(member(ALICE, ALICE, "join"), {})) == (True, None)
        assert len(client.requests) == 1

    def test_event_veto_holds(self) -> None:
        """The membership event's Veto, answered with the join, refuses its event."""
        instance, client = module({"then": {"id": 1, **VETO}})
        assert run(instance.user_may_join_room(ALICE, ROOM, False)) is NOT_SPAM
        with pytest.raises(SynapseError) as raised:
            run(instance.check_event_allowed(member(ALICE, ALICE, "join"), {}))
        assert (raised.value.code, raised.value.errcode) == (403, "ORG.EXAMPLE.NO")
        assert len(client.requests) == 1

    def test_event_modify_holds(self) -> None:
        """The membership event's Modify, answered with the join, replaces its content."""
        content = {"membership": "join", "displayname": "ALICE"}
        instance, client = module({"then": {"id": 1, "modify": content}})
        run(instance.user_may_join_room(ALICE, ROOM, False))
        allowed, replacement = run(instance.check_event_allowed(member(ALICE, ALICE, "join"), {}))
        assert allowed and replacement["content"] == content
        assert len(client.requests) == 1

    def test_other_content_asks_again(self) -> None:
        """A join event unlike the forecast (a reason) is asked on its own, with its content."""
        instance, client = module({"then": {"id": 1, **VETO}})
        run(instance.user_may_join_room(ALICE, ROOM, False))
        client.answer = {}
        real = member(ALICE, ALICE, "join", reason="hi")
        assert run(instance.check_event_allowed(real, {})) == (True, None)
        assert [op for op, _ in client.requests] == ["join", "event"]
        assert client.requests[1][1]["event"]["content"]["reason"] == "hi"

    def test_a_forecast_is_used_once(self) -> None:
        """A second join event (a profile change re-sends it) is asked on its own."""
        instance, client = module({"then": {"id": 1}})
        run(instance.user_may_join_room(ALICE, ROOM, False))
        for _ in range(2):
            run(instance.check_event_allowed(member(ALICE, ALICE, "join"), {}))
        assert [op for op, _ in client.requests] == ["join", "event"]

    def test_join_veto_refuses_and_keeps_nothing(self) -> None:
        """A vetoed join raises; nothing is kept for an event that will not come."""
        instance, _ = module(VETO)
        with pytest.raises(SynapseError):
            run(instance.user_may_join_room(ALICE, ROOM, False))
        assert not instance._forecasts

    def test_unanswered_event_is_asked_again(self) -> None:
        """An error answer for the event (or no answer at all) keeps nothing."""
        instance, _ = module({"then": {"id": 1, "error": {"errcode": "M_UNKNOWN", "error": "x"}}})
        run(instance.user_may_join_room(ALICE, ROOM, False))
        assert not instance._forecasts
        down, _ = module(DOWN, callbacks={"user_may_join_room": {"fail_open": True}})
        assert run(down.user_may_join_room(ALICE, ROOM, False)) is NOT_SPAM
        assert not down._forecasts


class TestInvite:
    def test_local_invite_in_one_request(self) -> None:
        """A local user's invite of a local user: one request, forecasting the invite event."""
        instance, client = module({"then": {"id": 1}})
        assert run(instance.user_may_invite(ALICE, BOB, ROOM)) is NOT_SPAM
        assert client.requests[0][1]["then"]["event"]["content"] == {
            "membership": "invite", "displayname": "bob"}
        assert run(instance.check_event_allowed(member(ALICE, BOB, "invite"), {})) == (True, None)
        assert len(client.requests) == 1

    def test_remote_invitee_asks_as_before(self) -> None:
        """A remote invitee's profile is not at hand: the invite is asked alone."""
        instance, client = module({})
        run(instance.user_may_invite(ALICE, "@carol:remote.example", ROOM))
        [(op, fields)] = client.requests
        assert op == "invite" and "then" not in fields


class TestForecasts:
    def test_expired_forecast_is_not_used(self) -> None:
        """Past FORECAST_TTL_S the forecast no longer answers."""
        now = [0.0]
        forecasts = Forecasts(clock=lambda: now[0])
        profile = type("P", (), {"display_name": None, "avatar_url": "mxc://x/y"})()
        forecast = forecast_event(ALICE, ALICE, ROOM, "join", profile)
        forecasts.expect(forecast, {"id": 1})
        now[0] = FORECAST_TTL_S + 0.001
        content = {"membership": "join", "avatar_url": "mxc://x/y"}
        assert forecasts.take(ALICE, ALICE, ROOM, content) is None

    def test_bounded(self) -> None:
        """At most MAX_FORECASTS are kept, the oldest dropped first."""
        forecasts = Forecasts()
        profile = type("P", (), {"display_name": None, "avatar_url": None})()
        for index in range(MAX_FORECASTS + 10):
            forecasts.expect(forecast_event(f"@u{index}:x", f"@u{index}:x", ROOM, "join",
                                            profile), {"id": index})
        assert len(forecasts) == MAX_FORECASTS
        assert forecasts.take("@u0:x", "@u0:x", ROOM, {"membership": "join"}) is None
        last = MAX_FORECASTS + 9
        assert forecasts.take(f"@u{last}:x", f"@u{last}:x", ROOM,
                              {"membership": "join"}) == {"id": last}
