"""ServletkitModule's callbacks with a stand-in container: local and remote events, policies.

The real-Synapse tests cover local users; events from other servers need a
second homeserver, so their path (``check_event_for_spam``) is checked here on
real Synapse event objects with a fake client in place of the connection.
"""

from __future__ import annotations

from typing import Any

import pytest
from synapse.api.room_versions import RoomVersions
from synapse.events import EventBase, make_event_from_dict
from synapse.module_api import NOT_SPAM, ProfileInfo
from synapse.module_api.errors import Codes, SynapseError
from twisted.internet import defer

from servletkit.synapse import ServletkitModule
from servletkit.synapse.client import ContainerUnavailable
from servletkit.synapse.settings import parse_settings
from tests.module_wire.test_client import result


class FakeApi:
    """The bits of ModuleApi the module uses; this server is ``local.example``."""

    def __init__(self) -> None:
        self.callbacks: dict[str, Any] = {}

    def register_third_party_rules_callbacks(self, **callbacks: Any) -> None:
        self.callbacks.update(callbacks)

    def register_spam_checker_callbacks(self, **callbacks: Any) -> None:
        self.callbacks.update(callbacks)

    def is_mine(self, user_id: str) -> bool:
        return user_id.endswith(":local.example")

    async def get_profile_for_user(self, localpart: str) -> ProfileInfo:
        """Every local user's display name is their localpart; none has an avatar."""
        return ProfileInfo(avatar_url=None, display_name=localpart)


class FakeClient:
    """Answers every request with ``answer`` (a frame, or an exception to fail with)."""

    def __init__(self, answer: dict[str, Any] | Exception) -> None:
        self.answer = answer
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def request(self, op: str, fields: dict[str, Any], timeout_s: float) -> defer.Deferred[Any]:
        self.requests.append((op, fields))
        if isinstance(self.answer, Exception):
            return defer.fail(self.answer)
        return defer.succeed({"id": 1, **self.answer})


def module(
    answer: dict[str, Any] | Exception, **config: Any
) -> tuple[ServletkitModule, FakeClient]:
    instance = ServletkitModule(parse_settings({"secret": "s", **config}), FakeApi())
    client = FakeClient(answer)
    instance._client = client  # type: ignore[assignment]
    return instance, client


def event(sender: str, **fields: Any) -> EventBase:
    return make_event_from_dict({
        "type": "m.room.message", "room_id": "!r:local.example", "sender": sender,
        "content": {"msgtype": "m.text", "body": "hello"}, "origin_server_ts": 5, "depth": 3,
        "prev_events": [], "auth_events": [], "hashes": {"sha256": "abc"}, "signatures": {},
        **fields,
    }, RoomVersions.V10)


def run(coroutine: Any) -> Any:
    return result(defer.ensureDeferred(coroutine))


VETO = {"veto": {"errcode": "ORG.EXAMPLE.NO", "reason": "not here"}}
DOWN = ContainerUnavailable("no connection")


class TestLocalEvents:
    def test_modify_returns_the_full_replacement(self) -> None:
        """A Modify becomes the original event dict with only the content replaced."""
        instance, client = module({"modify": {"msgtype": "m.text", "body": "HELLO"}})
        original = event("@a:local.example")
        allowed, replacement = run(instance.check_event_allowed(original, {}))
        assert allowed is True
        assert replacement == {**original.get_dict(),
                               "content": {"msgtype": "m.text", "body": "HELLO"}}
        [(op, fields)] = client.requests
        assert op == "event"
        assert fields["event"]["event_id"] == original.event_id

    def test_veto_raises_the_plugins_error(self) -> None:
        """A Veto is raised as the 403 the client sees, errcode and reason unchanged."""
        instance, _ = module(VETO)
        with pytest.raises(SynapseError) as raised:
            run(instance.check_event_allowed(event("@a:local.example"), {}))
        assert (raised.value.code, raised.value.errcode, raised.value.msg) == (
            403, "ORG.EXAMPLE.NO", "not here")

    def test_spam_check_of_a_local_event_asks_nothing(self) -> None:
        """check_event_for_spam does not ask again about a local event."""
        instance, client = module(VETO)
        assert run(instance.check_event_for_spam(event("@a:local.example"))) == NOT_SPAM
        assert client.requests == []

    def test_unanswered_fails_closed_by_default(self) -> None:
        """With the container away a local send is refused with 503 M_UNKNOWN."""
        instance, _ = module(DOWN)
        with pytest.raises(SynapseError) as raised:
            run(instance.check_event_allowed(event("@a:local.example"), {}))
        assert (raised.value.code, raised.value.errcode) == (503, Codes.UNKNOWN)

    def test_unanswered_fail_open(self) -> None:
        """With fail_open the send goes through unchanged."""
        instance, _ = module(DOWN, callbacks={"check_event_allowed": {"fail_open": True}})
        assert run(instance.check_event_allowed(event("@a:local.example"), {})) == (True, None)


class TestRemoteEvents:
    def test_veto_soft_fails(self) -> None:
        """A Veto of a remote event answers Synapse's spam check with M_FORBIDDEN."""
        instance, client = module(VETO)
        assert run(instance.check_event_for_spam(event("@m:remote.example"))) == Codes.FORBIDDEN
        assert [op for op, _ in client.requests] == ["event"]

    def test_modify_keeps_the_event(self) -> None:
        """A remote event cannot change: a Modify leaves it as it was."""
        instance, _ = module({"modify": {"body": "changed"}})
        assert run(instance.check_event_for_spam(event("@m:remote.example"))) == NOT_SPAM

    def test_unanswered_fails_open_by_default(self) -> None:
        """With the container away remote events are kept (refusing would lose them)."""
        instance, _ = module(DOWN)
        assert run(instance.check_event_for_spam(event("@m:remote.example"))) == NOT_SPAM

    def test_unanswered_fail_closed(self) -> None:
        """With fail_open = false they are soft-failed instead."""
        instance, _ = module(DOWN, callbacks={"check_event_for_spam": {"fail_open": False}})
        assert run(instance.check_event_for_spam(event("@m:remote.example"))) == Codes.FORBIDDEN

    def test_remote_knock_in_check_event_allowed_asks_nothing(self) -> None:
        """check_event_allowed leaves remote events to check_event_for_spam."""
        instance, client = module(VETO)
        assert run(instance.check_event_allowed(event("@m:remote.example"), {})) == (True, None)
        assert client.requests == []


def test_callbacks_registered() -> None:
    """The module registers every callback it documents."""
    api = FakeApi()
    ServletkitModule(parse_settings({"secret": "s"}), api)
    assert sorted(api.callbacks) == sorted(parse_settings({"secret": "s"}).policies)
