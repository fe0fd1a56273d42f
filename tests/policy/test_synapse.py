"""The policy wire against a real Synapse 1.163: Synapse consults servletkit as the room's
policy server over federation (loopback TLS); a plugin's Veto refuses the event."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from signedjson.key import decode_verify_key_base64
from signedjson.sign import verify_signed_json

from servletkit.testing.waiting import eventually
from servletkit.wires.policy.federation import FederationClient
from servletkit.wires.policy.keys import load_keys
from servletkit.wires.policy.pdu import ROOM_VERSIONS, redact
from tests.policy.deployment import FORBIDDEN, REASON, Client, PolicyDeployment

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyDeployment]:
    """The container (policy wire on) and a Synapse federating with it (once a session)."""
    deployment = PolicyDeployment(tmp_path_factory.mktemp("policy"))
    try:
        deployment.start_container()
        deployment.start_synapse()
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture(scope="session")
def protected(policy: PolicyDeployment) -> Iterator[tuple[Client, str]]:
    """A room whose m.room.policy names servletkit (from `servletkit policy key`), which
    servletkit joined with `servletkit policy join ROOM --via <Synapse's URL>`."""
    alice = Client(policy)
    room_id = alice.create_room()
    key = policy.cli("policy", "key")
    assert key.returncode == 0, key.stderr
    alice.set_policy(room_id, json.loads(key.stdout))
    joined = policy.cli("policy", "join", room_id, "--via", policy.hs_url)
    assert joined.returncode == 0, joined.stderr
    answer = json.loads(joined.stdout)
    assert answer["joined_as"] == policy.policy_user and answer["room_version"] == "12"
    assert "warning" not in joined.stderr  # the room's policy state names us
    yield alice, room_id
    alice.close()


def stored_event(policy: PolicyDeployment, room_id: str, event_id: str) -> dict[str, Any]:
    """The event as Synapse stores it (fetched over federation, as the joined server)."""
    state_dir = policy.workdir / ".servletkit" / "policy"

    async def fetch() -> Any:
        async with httpx.AsyncClient() as http:
            client = FederationClient(policy.server_name, load_keys(state_dir).federation, http)
            return await client.request("GET", "localhost", "/_matrix/federation/v1/event/"
                                        + quote(event_id, safe=""), base_url=policy.hs_url)

    [pdu] = asyncio.run(fetch())["pdus"]
    return dict(pdu)


def test_clean_message_is_signed_and_stored(policy: PolicyDeployment,
                                            protected: tuple[Client, str]) -> None:
    """Synapse asks /sign; the stored event carries servletkit's valid policy signature."""
    alice, room_id = protected
    response = alice.send(room_id, "a perfectly fine message")
    assert response.status_code == 200, response.text
    pdu = stored_event(policy, room_id, response.json()["event_id"])
    signature = pdu["signatures"][policy.server_name]
    assert list(signature) == ["ed25519:policy_server"]
    key = decode_verify_key_base64("ed25519", "policy_server",
                                   json.loads(policy.cli("policy", "key").stdout)
                                   ["public_keys"]["ed25519"])
    redacted = redact(pdu, ROOM_VERSIONS["12"])
    verify_signed_json(redacted, policy.server_name, key)
    assert "localhost" in pdu["signatures"]  # Synapse's own signature is kept beside ours


def test_vetoed_message_is_refused_with_the_plugins_reason(
        protected: tuple[Client, str]) -> None:
    """The word filter's Veto: the sender gets 400 M_FORBIDDEN with the plugin's reason."""
    alice, room_id = protected
    response = alice.send(room_id, f"this contains {FORBIDDEN}")
    assert response.status_code == 400
    assert response.json() == {"errcode": "M_FORBIDDEN", "error": REASON}
    messages = alice.call("GET", f"/rooms/{quote(room_id)}/messages?dir=b&limit=20").json()
    assert FORBIDDEN not in json.dumps(messages["chunk"])


def test_non_member_state_is_signed_too(policy: PolicyDeployment,
                                        protected: tuple[Client, str]) -> None:
    """A topic (non-member state) goes through the policy server as well."""
    alice, room_id = protected
    response = alice.call("PUT", f"/rooms/{quote(room_id)}/state/m.room.topic/",
                          {"topic": "policy-checked topic"})
    assert response.status_code == 200, response.text
    pdu = stored_event(policy, room_id, response.json()["event_id"])
    assert list(pdu["signatures"][policy.server_name]) == ["ed25519:policy_server"]


def test_unsigned_and_forged_sign_requests_are_refused(
        policy: PolicyDeployment, protected: tuple[Client, str]) -> None:
    """Directly at the listener: no X-Matrix, or one claiming to be Synapse: 401."""
    _, room_id = protected
    pdu = {"room_id": room_id, "type": "m.room.message", "sender": "@x:localhost",
           "content": {"body": "hi"}, "origin_server_ts": 1}
    with httpx.Client(base_url=policy.policy_url, verify=False) as http:
        unsigned = http.post("/_matrix/policy/v1/sign", json=pdu)
        forged = http.post("/_matrix/policy/v1/sign", json=pdu, headers={
            "Authorization": f'X-Matrix origin="localhost",destination="{policy.server_name}"'
                             ',key="ed25519:a_abcd",sig="c2lnbmF0dXJl"'})
    for response in (unsigned, forged):
        assert response.status_code == 401 and response.json()["errcode"] == "M_UNAUTHORIZED"


def test_invited_policy_server_joins_and_protects(policy: PolicyDeployment) -> None:
    """A room admin invites @policy:…; the wire accepts, joins, and then vetoes."""
    alice = Client(policy)
    room_id = alice.create_room()
    alice.set_policy(room_id, json.loads(policy.cli("policy", "key").stdout))
    invited = alice.call("POST", f"/rooms/{quote(room_id)}/invite",
                         {"user_id": policy.policy_user})
    assert invited.status_code == 200, invited.text

    def joined() -> bool:
        members = alice.call("GET", f"/rooms/{quote(room_id)}/joined_members").json()
        return policy.policy_user in members.get("joined", {})

    asyncio.run(eventually(joined, within=20))
    rooms = policy.cli("policy", "rooms").stdout
    assert room_id in rooms and "joined" in rooms
    refused = alice.send(room_id, f"{FORBIDDEN} again")
    alice.close()
    assert refused.status_code == 400 and refused.json()["error"] == REASON


def test_container_down_refuses_sending(policy: PolicyDeployment,
                                        protected: tuple[Client, str]) -> None:
    """With the container stopped, Synapse refuses every send in the room (fail-closed:
    500 M_UNKNOWN, quickly); once it is back, sending works again. (Runs last.)"""
    alice, room_id = protected
    policy.stop_container()
    try:
        started = time.monotonic()
        response = alice.send(room_id, "while the policy server is down")
        took = time.monotonic() - started
        assert response.status_code == 500 and response.json()["errcode"] == "M_UNKNOWN"
        assert took < 10, took
        print(f"\n[policy server down: {response.status_code} {response.json()} "
              f"after {took:.2f} s]")
    finally:
        policy.start_container()
    back = alice.send(room_id, "the policy server is back")
    assert back.status_code == 200, back.text
