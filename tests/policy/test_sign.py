"""``POST /_matrix/policy/v1/sign``: who may ask, what is checked, what the plugins decide."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from signedjson.key import decode_verify_key_base64, generate_signing_key
from signedjson.sign import sign_json, verify_signed_json

from servletkit import Allow, Event, Modify, PluginContext, Veto, hookimpl
from servletkit.wires.policy.pdu import ROOM_VERSIONS, redact
from servletkit.wires.policy.xmatrix import authorization
from tests.policy.support import POLICY, ROOM, RemoteServer

SIGN = "/_matrix/policy/v1/sign"
UNSTABLE = "/_matrix/policy/unstable/org.matrix.msc4284/sign"


class Moderator:
    """Vetoes bodies containing 'spam'; records what it saw."""

    def __init__(self, delay: float = 0.0) -> None:
        self.seen: list[Event] = []
        self.joins: list[tuple[str, str]] = []
        self.delay = delay

    @hookimpl
    async def on_send_event(self, event: Event, context: PluginContext) -> Veto | None:
        self.seen.append(event)
        await asyncio.sleep(self.delay)
        if "spam" in str(event.content.get("body")):
            return Veto("no spam in this room, please")
        return None

    @hookimpl
    def on_join_room(self, user_id: str, room_id: str, context: PluginContext) -> Veto | None:
        self.joins.append((user_id, room_id))
        return Veto("bots may not join") if user_id.startswith("@bot") else None


def policy_verifies(wire: Any, pdu: dict[str, Any], answer: dict[str, Any]) -> bool:
    """Whether ``answer`` is a valid policy signature of ``pdu`` by the published key."""
    key = decode_verify_key_base64("ed25519", "policy_server", wire.keys.policy_public_key)
    redacted = redact(pdu, ROOM_VERSIONS["12"])
    redacted["signatures"] = answer
    verify_signed_json(redacted, POLICY, key)
    return True


async def test_allowed_event_is_signed_with_the_policy_key(make_policy: Any) -> None:
    """A clean event: 200 with one signature, key ed25519:policy_server, over the redacted
    event; the plugin saw it with event.wire == "policy"."""
    moderator = Moderator()
    wire, client, remote = await make_policy({"mod": moderator})
    pdu = remote.pdu("hello")
    response = await remote.post(client, SIGN, pdu)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert list(answer) == [POLICY] and list(answer[POLICY]) == ["ed25519:policy_server"]
    assert policy_verifies(wire, pdu, answer)
    [event] = moderator.seen
    assert event.wire == "policy" and event.stage == "before_store"
    assert event.content["body"] == "hello" and event.event_id.startswith("$")


async def test_vetoed_event_is_refused_with_the_plugins_reason(make_policy: Any) -> None:
    """A Veto: 400 M_FORBIDDEN with the plugin's reason, on the stable and unstable paths."""
    _wire, client, remote = await make_policy({"mod": Moderator()})
    for uri in (SIGN, UNSTABLE):
        response = await remote.post(client, uri, remote.pdu("buy spam now"))
        assert response.status_code == 400
        assert response.json() == {"errcode": "M_FORBIDDEN",
                                   "error": "no spam in this room, please"}


async def test_no_plugins_means_signed(make_policy: Any) -> None:
    """No opinion from anyone: the event is signed."""
    wire, client, remote = await make_policy({})
    pdu = remote.pdu("anything")
    response = await remote.post(client, SIGN, pdu)
    assert response.status_code == 200 and policy_verifies(wire, pdu, response.json())


async def test_join_asks_on_join_room(make_policy: Any) -> None:
    """A join PDU goes to on_join_room (user, room); its Veto refuses the join."""
    moderator = Moderator()
    _wire, client, remote = await make_policy({"mod": moderator})
    for user, status in (("@ok:remote.test", 200), ("@bot1:remote.test", 400)):
        pdu = remote.pdu(type="m.room.member", state_key=user, sender=user,
                         content={"membership": "join"})
        response = await remote.post(client, SIGN, pdu)
        assert response.status_code == status, response.text
    assert moderator.joins == [("@ok:remote.test", ROOM), ("@bot1:remote.test", ROOM)]
    assert moderator.seen == []


async def test_same_event_twice_runs_the_plugins_once(make_policy: Any) -> None:
    """Concurrent and repeated asks for one event share one run and get the same answer."""
    moderator = Moderator(delay=0.05)
    wire, client, remote = await make_policy({"mod": moderator})
    pdu = remote.pdu("once")
    answers = await asyncio.gather(*(remote.post(client, SIGN, pdu) for _ in range(5)))
    again = await remote.post(client, SIGN, pdu)
    assert {r.status_code for r in [*answers, again]} == {200}
    assert len({r.text for r in [*answers, again]}) == 1
    assert len(moderator.seen) == 1 and wire.judge.runs == 1
    await remote.post(client, SIGN, remote.pdu("spam twice"))
    refused = await remote.post(client, SIGN, remote.pdu("spam twice"))  # a new event
    assert refused.status_code == 400 and wire.judge.runs == 3


async def test_modify_is_a_plugin_error_not_applied(make_policy: Any) -> None:
    """A Modify cannot apply on the policy wire: the event is signed unchanged."""

    class Rewriter:
        @hookimpl
        def on_send_event(self, event: Event, context: PluginContext) -> Modify:
            return Modify(content={"body": "rewritten"})

    wire, client, remote = await make_policy({"rw": Rewriter()})
    pdu = remote.pdu("original")
    response = await remote.post(client, SIGN, pdu)
    assert response.status_code == 200 and policy_verifies(wire, pdu, response.json())


async def test_allow_is_signed(make_policy: Any) -> None:
    """An explicit Allow is signed like no opinion."""

    class Allower:
        @hookimpl
        def on_send_event(self, event: Event, context: PluginContext) -> Allow:
            return Allow()

    _wire, client, remote = await make_policy({"a": Allower()})
    pdu = remote.pdu("fine")
    assert (await remote.post(client, SIGN, pdu)).status_code == 200


# -------------------------------------------------------------------------
# Hostile and malformed requests
# -------------------------------------------------------------------------


async def test_unsigned_request_is_401(make_policy: Any) -> None:
    """No Authorization header: 401 M_UNAUTHORIZED, and the plugins never ran."""
    moderator = Moderator()
    _wire, client, remote = await make_policy({"mod": moderator})
    response = await client.post(SIGN, json=remote.pdu())
    assert response.status_code == 401 and response.json()["errcode"] == "M_UNAUTHORIZED"
    assert moderator.seen == []


async def test_forged_signature_is_401(make_policy: Any) -> None:
    """Signed with a key that is not the origin's published one: 401."""
    _wire, client, remote = await make_policy({})
    pdu = remote.pdu()
    forged = authorization("POST", SIGN, remote.name, POLICY, generate_signing_key("a_remote"),
                           pdu)
    response = await client.post(SIGN, json=pdu, headers={"Authorization": forged})
    assert response.status_code == 401 and response.json()["errcode"] == "M_UNAUTHORIZED"


async def test_signature_over_other_content_is_401(make_policy: Any) -> None:
    """A valid signature for another body (a replayed header) does not authorise this one."""
    _wire, client, remote = await make_policy({})
    header = remote.headers("POST", SIGN, remote.pdu("first"))
    response = await client.post(SIGN, json=remote.pdu("second"), headers=header)
    assert response.status_code == 401


async def test_wrong_destination_is_401(make_policy: Any) -> None:
    """A request signed for another server: 401."""
    _wire, client, remote = await make_policy({})
    pdu = remote.pdu()
    header = remote.headers("POST", SIGN, pdu, destination="elsewhere.test")
    response = await client.post(SIGN, json=pdu, headers=header)
    assert response.status_code == 401 and "destination" in response.json()["error"]


async def test_unknown_origin_is_401(make_policy: Any) -> None:
    """An origin whose keys cannot be fetched: 401, keys fetched at most once a minute."""
    _wire, client, _remote = await make_policy({})
    stranger = RemoteServer("stranger.test")
    for _ in range(2):
        response = await stranger.post(client, SIGN, stranger.pdu())
        assert response.status_code == 401


async def test_caller_keys_are_cached(make_policy: Any) -> None:
    """The caller's keys are fetched once for many requests."""
    _wire, client, remote = await make_policy({})
    for i in range(3):
        assert (await remote.post(client, SIGN, remote.pdu(f"m{i}"))).status_code == 200
    assert remote.key_requests == 1


@pytest.mark.parametrize("header", ["Bearer abc", "X-Matrix", 'X-Matrix origin="a"',
                                    'X-Matrix origin="a",key="ed25519:x",sig="@@@",,=', "\x00"])
async def test_malformed_authorization_is_401(make_policy: Any, header: str) -> None:
    """Garbage in the Authorization header: 401, never a 500."""
    _wire, client, remote = await make_policy({})
    response = await client.post(SIGN, json=remote.pdu(), headers={"Authorization": header})
    assert response.status_code == 401 and response.json()["errcode"] == "M_UNAUTHORIZED"


async def test_bad_json_is_400_not_json(make_policy: Any) -> None:
    """A body that is not JSON: 400 M_NOT_JSON."""
    _wire, client, remote = await make_policy({})
    response = await client.post(SIGN, content=b"{not json", headers=remote.headers("POST", SIGN))
    assert response.status_code == 400 and response.json()["errcode"] == "M_NOT_JSON"


async def test_oversized_body_is_413(make_policy: Any) -> None:
    """A body above the PDU limit: 413 M_TOO_LARGE, before any key fetch."""
    _wire, client, remote = await make_policy({})
    pdu = remote.pdu("x" * 200_000)
    response = await remote.post(client, SIGN, pdu)
    assert response.status_code == 413 and response.json()["errcode"] == "M_TOO_LARGE"
    assert remote.key_requests == 0


@pytest.mark.parametrize("mangle", ["not_object", "no_sender", "bad_hash", "no_hash"])
async def test_malformed_pdu_is_400_bad_json(make_policy: Any, mangle: str) -> None:
    """Not a PDU, a missing field, a content hash that does not match: 400 M_BAD_JSON."""
    _wire, client, remote = await make_policy({"mod": Moderator()})
    pdu: Any = remote.pdu("hello")
    if mangle == "not_object":
        pdu = [pdu]
    elif mangle == "no_sender":
        del pdu["sender"]
    elif mangle == "bad_hash":
        pdu["content"]["body"] = "swapped after hashing"
    else:
        del pdu["hashes"]
    response = await remote.post(client, SIGN, pdu)
    assert response.status_code == 400 and response.json()["errcode"] == "M_BAD_JSON"


async def test_unknown_room_is_404(make_policy: Any) -> None:
    """A room the policy server does not serve: 404 M_NOT_FOUND."""
    _wire, client, remote = await make_policy({})
    response = await remote.post(client, SIGN, remote.pdu(room_id="!other:remote.test"))
    assert response.status_code == 404 and response.json()["errcode"] == "M_NOT_FOUND"


async def test_wrong_method_and_unknown_path(make_policy: Any) -> None:
    """GET on /sign: 405 M_UNRECOGNIZED; an unknown path: 404 M_UNRECOGNIZED."""
    _wire, client, _remote = await make_policy({})
    assert (await client.get(SIGN)).json()["errcode"] == "M_UNRECOGNIZED"
    response = await client.get("/_matrix/federation/v1/nothing")
    assert response.status_code == 404 and response.json()["errcode"] == "M_UNRECOGNIZED"


# -------------------------------------------------------------------------
# Keys
# -------------------------------------------------------------------------


async def test_published_keys(make_policy: Any) -> None:
    """/_matrix/key/v2/server is self-signed with the federation key, which is not the
    policy key; the well-known names the policy key."""
    wire, client, _remote = await make_policy({})
    keys = (await client.get("/_matrix/key/v2/server")).json()
    assert keys["server_name"] == POLICY
    [(key_id, entry)] = keys["verify_keys"].items()
    assert key_id.startswith("ed25519:") and key_id != "ed25519:policy_server"
    verify_signed_json(keys, POLICY, decode_verify_key_base64("ed25519", key_id[8:],
                                                              entry["key"]))
    assert entry["key"] != wire.keys.policy_public_key
    well_known = await client.get("/.well-known/matrix/policy_server")
    assert well_known.json() == {"public_keys": {"ed25519": wire.keys.policy_public_key}}
    assert well_known.headers["access-control-allow-origin"] == "*"


async def test_request_json_roundtrip_is_canonical(make_policy: Any) -> None:
    """A body sent with other whitespace and key order still verifies (canonical JSON)."""
    _wire, client, remote = await make_policy({})
    pdu = remote.pdu("spaced")
    raw = json.dumps(pdu, indent=3, sort_keys=False).encode()
    response = await client.post(SIGN, content=raw, headers={
        **remote.headers("POST", SIGN, pdu), "Content-Type": "application/json"})
    assert response.status_code == 200, response.text


def test_x_matrix_header_forms() -> None:
    """Quoted and bare values, spaces after commas, any case of names; destination
    optional (older servers leave it out)."""
    from servletkit.wires.policy.xmatrix import parse_authorization

    auth = parse_authorization('X-Matrix origin=a.test, Key="ed25519:k",sig="c2ln",'
                               'destination="b.test"')
    assert (auth.origin, auth.key, auth.sig, auth.destination) == (
        "a.test", "ed25519:k", "c2ln", "b.test")
    assert parse_authorization('X-Matrix origin="a",key="k",sig="s"').destination is None


async def test_plugin_error_is_500_and_not_cached(make_policy: Any) -> None:
    """A dispatcher that raises: 500 M_UNKNOWN (no traceback to the peer); the next ask
    runs again instead of reusing the failure."""
    wire, client, remote = await make_policy({})
    calls = []

    async def broken(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise RuntimeError("dispatcher bug")

    wire.judge.dispatcher.intercept = broken  # type: ignore[method-assign]
    pdu = remote.pdu("boom")
    for _ in range(2):
        response = await remote.post(client, SIGN, pdu)
        assert response.status_code == 500
        assert response.json() == {"errcode": "M_UNKNOWN", "error": "Internal server error"}
    assert len(calls) == 2


async def test_float_in_the_request_verifies(make_policy: Any) -> None:
    """A float the fast encoder renders otherwise than canonicaljson (``1e-07``): the
    caller's X-Matrix signature and the content hash still verify (checked again with
    canonicaljson), and the answer is the signature over canonicaljson's bytes."""
    wire, client, remote = await make_policy()
    pdu = remote.pdu("hello", tiny=1e-07)
    response = await remote.post(client, SIGN, pdu)
    assert response.status_code == 200, response.text
    assert policy_verifies(wire, pdu, response.json())


async def test_another_servers_event_needs_its_senders_signature(make_policy: Any) -> None:
    """A server asking about an event another server sent (it received it without a
    policy signature): the sender's server's signature over the event is checked with
    that server's published key. Intact: signed. Forged or missing: 400 M_FORBIDDEN
    naming the sender's server, the plugins not asked. The sender's own server asking
    is authenticated by its X-Matrix signature over the PDU (no second check)."""
    moderator = Moderator()
    third = RemoteServer("third.test")
    wire, client, remote = await make_policy({"mod": moderator}, others=[third])
    pdu = remote.pdu("relayed")
    response = await third.post(client, SIGN, pdu)
    assert response.status_code == 200, response.text
    assert policy_verifies(wire, pdu, response.json())
    assert remote.key_requests == 1 and third.key_requests == 1

    forged = remote.pdu("forged")
    forged["signatures"] = third.pdu("forged")["signatures"] | {
        remote.name: {"ed25519:a_remote": third.pdu("x")["signatures"][third.name][
            "ed25519:a_remote"]}}
    unsigned = remote.pdu("unsigned")
    del unsigned["signatures"]
    for bad in (forged, unsigned):
        response = await third.post(client, SIGN, bad)
        assert response.status_code == 400, response.text
        assert response.json()["errcode"] == "M_FORBIDDEN"
        assert f"sender's server {remote.name}" in response.json()["error"]
    assert [e.content["body"] for e in moderator.seen] == ["relayed"]

    response = await remote.post(client, SIGN, unsigned)  # the sender's own server
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("room_version", ["1", "2"])
async def test_event_id_server_signs_in_room_versions_1_and_2(make_policy: Any,
                                                               room_version: str) -> None:
    """Rooms v1 and v2: the event ID is ``$opaque:server`` and that server's signature is
    required as well as the sender's server's. Missing or not its own: 400 M_FORBIDDEN
    naming the event ID's server, the plugins not asked; present and verifying, or the
    caller being that server (its X-Matrix covers the PDU): signed. An event ID without
    a server: 400 M_BAD_JSON."""
    moderator = Moderator()
    third = RemoteServer("third.test")
    wire, client, remote = await make_policy({"mod": moderator}, others=[third])
    room = "!old:remote.test"
    await wire.rooms.add(room, room_version, "joined", remote.name)
    version = ROOM_VERSIONS[room_version]

    def pdu(body: str, event_id: str, *signers: RemoteServer) -> dict[str, Any]:
        event = remote.pdu(body, room_id=room, room_version=room_version, event_id=event_id)
        redacted = redact(event, version)
        redacted.pop("signatures")
        for signer in signers:
            event["signatures"] |= sign_json(dict(redacted), signer.name, signer.key)[
                "signatures"]
        return event

    own = pdu("own", f"$own:{remote.name}")
    assert (await remote.post(client, SIGN, own)).status_code == 200
    foreign_id = pdu("foreign id", f"$a:{third.name}")  # signed by the sender's server only
    refused = await remote.post(client, SIGN, foreign_id)
    assert refused.status_code == 400 and refused.json()["errcode"] == "M_FORBIDDEN"
    assert f"event ID's server {third.name}" in refused.json()["error"]
    forged = pdu("forged", f"$b:{third.name}")
    forged["signatures"][third.name] = forged["signatures"][remote.name]
    refused = await remote.post(client, SIGN, forged)
    assert refused.status_code == 400 and "does not verify" in refused.json()["error"]

    both = pdu("both", f"$c:{third.name}", third)
    signed = await remote.post(client, SIGN, both)
    assert signed.status_code == 200, signed.text
    asked_by_id_server = await third.post(client, SIGN, pdu("by id server", f"$d:{third.name}"))
    assert asked_by_id_server.status_code == 200, asked_by_id_server.text

    no_server = await remote.post(client, SIGN, pdu("no server", "$nocolon"))
    assert no_server.status_code == 400 and no_server.json()["errcode"] == "M_BAD_JSON"
    assert [e.content["body"] for e in moderator.seen] == ["own", "both", "by id server"]
