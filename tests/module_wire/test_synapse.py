"""The module wire against a real Synapse: decisions reach clients, failures follow policy."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from servletkit.testing.synapse import SynapseServer
from tests.module_wire import wire_plugin
from tests.module_wire.conftest import SLOW_BUDGET_MS, ContainerThread, User, UserFactory

pytestmark = pytest.mark.integration


def _bodies(user: User, room_id: str) -> list[str]:
    return [event["content"].get("body") for event in user.messages(room_id)
            if event["type"] == "m.room.message"]


class TestEvents:
    def test_veto_reaches_the_sender(self, alice: User) -> None:
        """A vetoed message: the sender sees 403 with the plugin's errcode and reason."""
        room = alice.create_room()
        response = alice.send(room, "a forbidden word")
        assert response.status_code == 403
        assert response.json() == {"errcode": wire_plugin.VETO_ERRCODE,
                                   "error": "the word 'forbidden' is not welcome here"}
        assert "a forbidden word" not in _bodies(alice, room)

    def test_modify_reaches_other_users(self, alice: User, bob: User) -> None:
        """A modified message is stored with the new content: another user receives it."""
        room = alice.create_room(preset="public_chat")
        assert bob.http.post(f"/join/{room}", json={}).status_code == 200
        response = alice.send(room, "/shout hello there")
        assert response.status_code == 200, response.text
        event_id = response.json()["event_id"]
        received = {event["event_id"]: event for event in bob.messages(room)}
        assert received[event_id]["content"]["body"] == "HELLO THERE"

    def test_state_event_modified(self, alice: User, bob: User) -> None:
        """A state event is modified too: the room's topic is the plugin's version."""
        room = alice.create_room(preset="public_chat")
        assert bob.http.post(f"/join/{room}", json={}).status_code == 200
        response = alice.http.put(f"/rooms/{room}/state/m.room.topic/",
                                  json={"topic": "/shout quiet topic"})
        assert response.status_code == 200, response.text
        state = bob.http.get(f"/rooms/{room}/state/m.room.topic/")
        assert state.json() == {"topic": "QUIET TOPIC"}

    def test_plugin_sees_events_before_store(self, alice: User) -> None:
        """Events reach on_send_event once each, with stage "before_store"."""
        room = alice.create_room()
        body = f"hello {uuid.uuid4().hex}"
        assert alice.send(room, body).status_code == 200
        seen = [e for e in wire_plugin.SEEN if e.content.get("body") == body]
        assert [(e.stage, e.room_id, e.sender) for e in seen] == [
            ("before_store", room, alice.user_id)
        ]


class TestActions:
    def test_join_refused(self, alice: User, make_user: UserFactory) -> None:
        """on_join_room's Veto refuses the join: 403, errcode and reason."""
        room = alice.create_room(preset="public_chat")
        blocked = make_user(localpart=f"blocked{uuid.uuid4().hex[:8]}")
        response = blocked.http.post(f"/join/{room}", json={})
        assert response.status_code == 403
        assert response.json() == {"errcode": wire_plugin.VETO_ERRCODE,
                                   "error": f"{blocked.user_id} may not join {room}"}

    def test_invite_refused(self, alice: User, make_user: UserFactory) -> None:
        """on_invite's Veto refuses the invite; an ordinary invite goes through."""
        room = alice.create_room()
        blocked = make_user(localpart=f"blocked{uuid.uuid4().hex[:8]}")
        response = alice.http.post(f"/rooms/{room}/invite", json={"user_id": blocked.user_id})
        assert response.status_code == 403
        assert response.json() == {"errcode": wire_plugin.VETO_ERRCODE,
                                   "error": f"{blocked.user_id} may not be invited"}
        friend = make_user()
        ok = alice.http.post(f"/rooms/{room}/invite", json={"user_id": friend.user_id})
        assert ok.status_code == 200, ok.text

    def test_room_creation_refused(self, alice: User) -> None:
        """on_create_room's Veto refuses /createRoom with the plugin's errcode."""
        response = alice.http.post("/createRoom", json={"name": "forbidden room"})
        assert response.status_code == 403
        assert response.json() == {"errcode": wire_plugin.VETO_ERRCODE,
                                   "error": "no forbidden rooms"}

    def test_login_refused(self, synapse: SynapseServer, make_user: UserFactory) -> None:
        """on_connect_event_stream's Veto refuses the login; others log in."""
        refused = make_user(localpart=f"nologin{uuid.uuid4().hex[:8]}")
        allowed = make_user()
        for user, status in ((refused, 403), (allowed, 200)):
            response = httpx.post(f"{synapse.url}/_matrix/client/v3/login", json={
                "type": "m.login.password", "password": "servletkit-pw-1",
                "identifier": {"type": "m.id.user", "user": user.localpart},
                "device_id": "DEVICE1",
            })
            assert response.status_code == status, response.text
        assert response.json()["user_id"] == allowed.user_id
        refusal = httpx.post(f"{synapse.url}/_matrix/client/v3/login", json={
            "type": "m.login.password", "password": "servletkit-pw-1",
            "identifier": {"type": "m.id.user", "user": refused.localpart},
            "device_id": "DEVICE1",
        })
        assert refusal.json() == {"errcode": wire_plugin.VETO_ERRCODE,
                                  "error": f"{refused.user_id} may not log in (DEVICE1)"}


class TestOneRoundTrip:
    """A join or invite and its membership event: one request to the container."""

    def test_local_join(self, alice: User, bob: User, container: ContainerThread) -> None:
        """on_join_room and the join event's on_send_event come in one round trip."""
        room = alice.create_room(preset="public_chat")
        before = container.round_trips()
        assert bob.http.post(f"/join/{room}", json={}).status_code == 200
        after = container.round_trips()
        assert after["on_join_room"] - before["on_join_room"] == 1
        assert after["on_send_event"] == before["on_send_event"]
        joins = [e for e in wire_plugin.SEEN if e.type == "m.room.member"
                 and e.state_key == bob.user_id and e.room_id == room]
        assert [e.content for e in joins] == [bob.member_content(room, bob.user_id)]

    def test_invite(self, alice: User, bob: User, container: ContainerThread) -> None:
        """on_invite and the invite event's on_send_event come in one round trip."""
        room = alice.create_room()
        before = container.round_trips()
        response = alice.http.post(f"/rooms/{room}/invite", json={"user_id": bob.user_id})
        assert response.status_code == 200, response.text
        after = container.round_trips()
        assert after["on_invite"] - before["on_invite"] == 1
        assert after["on_send_event"] == before["on_send_event"]
        assert alice.member_content(room, bob.user_id)["membership"] == "invite"

    def test_join_event_veto_holds(self, alice: User, bob: User) -> None:
        """The join event's Veto (the display name), answered with the join, refuses it."""
        room = alice.create_room(preset="public_chat")
        bob.set_name("forbidden bob")
        response = bob.http.post(f"/join/{room}", json={})
        assert response.status_code == 403
        assert response.json() == {"errcode": wire_plugin.VETO_ERRCODE,
                                   "error": "the name 'forbidden bob' is not welcome here"}
        assert bob.http.get(f"/rooms/{room}/messages").status_code == 403

    def test_join_event_modify_holds(self, alice: User, bob: User) -> None:
        """The join event's Modify, answered with the join, is what Synapse stores."""
        room = alice.create_room(preset="public_chat")
        bob.set_name("/shout bob")
        assert bob.http.post(f"/join/{room}", json={}).status_code == 200
        assert alice.member_content(room, bob.user_id)["displayname"] == "BOB"

    def test_join_unlike_the_forecast(
        self, alice: User, bob: User, container: ContainerThread
    ) -> None:
        """A join with a reason (not in the forecast) is asked again, with its content."""
        room = alice.create_room(preset="public_chat")
        before = container.round_trips()
        response = bob.http.post(f"/join/{room}", json={"reason": "forbidden reason"})
        assert response.status_code == 200, response.text
        after = container.round_trips()
        assert after["on_send_event"] - before["on_send_event"] == 1
        seen = [e for e in wire_plugin.SEEN if e.type == "m.room.member"
                and e.state_key == bob.user_id and e.room_id == room]
        assert seen[-1].content.get("reason") == "forbidden reason"

    def test_remote_join_decided(
        self, make_user: UserFactory, container: ContainerThread
    ) -> None:
        """A remote join (no check_event_allowed follows) is still decided by on_join_room."""
        room = "!nowhere:unreachable.invalid"
        blocked = make_user(localpart=f"blocked{uuid.uuid4().hex[:8]}")
        response = blocked.http.post(f"/join/{room}",
                                     params={"server_name": "unreachable.invalid"}, json={})
        assert response.status_code == 403
        assert response.json()["errcode"] == wire_plugin.VETO_ERRCODE
        before = container.round_trips()
        allowed = make_user()
        response = allowed.http.post(f"/join/{room}",
                                     params={"server_name": "unreachable.invalid"}, json={})
        assert response.status_code != 403, response.text  # refused by federation, not by us
        assert container.round_trips()["on_join_room"] - before["on_join_room"] == 1


class TestFailures:
    def test_slow_container(
        self, homeservers: dict[str, SynapseServer], make_user: UserFactory
    ) -> None:
        """Past its budget, fail-closed refuses (503) and fail-open lets the message through."""
        for name, status in (("closed", 503), ("open", 200)):
            user = make_user(homeservers[name])
            room = user.create_room()
            start = time.monotonic()
            response = user.send(room, "slow message")
            elapsed = time.monotonic() - start
            assert response.status_code == status, (name, response.text)
            assert elapsed < 0.9, f"{name}: waited {elapsed:.2f} s, budget {SLOW_BUDGET_MS} ms"
        assert response.status_code == 200
        assert "slow message" in _bodies(user, room)

    def test_container_down_then_back(
        self, homeservers: dict[str, SynapseServer], container: ContainerThread,
        make_user: UserFactory,
    ) -> None:
        """Container stopped: closed refuses with 503, open lets through, Synapse stays up;
        restarted: forwarding resumes (vetoes apply again) on both."""
        users = {name: make_user(server) for name, server in homeservers.items()}
        rooms = {name: user.create_room() for name, user in users.items()}
        container.stop()
        try:
            closed = users["closed"].send(rooms["closed"], "while down")
            assert closed.status_code == 503
            assert closed.json()["errcode"] == "M_UNKNOWN"
            opened = users["open"].send(rooms["open"], "a forbidden word while down")
            assert opened.status_code == 200, opened.text
            for name, server in homeservers.items():  # not wedged: other requests still work
                versions = httpx.get(f"{server.url}/_matrix/client/versions", timeout=5)
                assert versions.status_code == 200, name
        finally:
            container.start()
        for name, user in users.items():
            deadline = time.monotonic() + 5
            while True:  # the module reconnects within its retry delay (at most 1 s)
                response = user.send(rooms[name], "a forbidden word after restart")
                if response.status_code == 403 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert response.status_code == 403, (name, response.text)
            assert response.json()["errcode"] == wire_plugin.VETO_ERRCODE
