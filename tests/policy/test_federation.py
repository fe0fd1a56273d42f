"""The federation endpoints a joined policy server answers: /send, invites; and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from signedjson.key import decode_verify_key_base64
from signedjson.sign import verify_signed_json

from servletkit.container.cli import main
from servletkit.wires.policy.pdu import ROOM_VERSIONS, event_id, redact
from tests.policy.support import POLICY, REMOTE, ROOM

SEND = "/_matrix/federation/v1/send/txn1"


async def test_send_accepts_pdus_and_answers_each(make_policy: Any) -> None:
    """/send: 200 with a result per PDU of a served room (IDs computed for v12)."""
    _wire, client, remote = await make_policy({})
    pdus = [remote.pdu("a"), remote.pdu("b")]
    response = await remote.put(client, SEND, {"origin": REMOTE, "pdus": pdus, "edus": []})
    assert response.status_code == 200
    assert response.json() == {"pdus": {event_id(p, ROOM_VERSIONS["12"]): {} for p in pdus}}


async def test_send_notes_that_we_were_removed(make_policy: Any) -> None:
    """A kick or ban of the policy user in /send: the room is no longer served."""
    wire, client, remote = await make_policy({})
    kick = remote.pdu(type="m.room.member", state_key=f"@policy:{POLICY}",
                      content={"membership": "leave"})
    await remote.put(client, SEND, {"origin": REMOTE, "pdus": [kick], "edus": []})
    assert await wire.rooms.get(ROOM) is None
    refused = await remote.post(client, "/_matrix/policy/v1/sign", remote.pdu())
    assert refused.status_code == 404


@pytest.mark.parametrize("body", [{"pdus": "x"}, [], {"edus": []}])
async def test_send_malformed_is_400(make_policy: Any, body: Any) -> None:
    """/send without a pdus array: 400 M_BAD_JSON."""
    _wire, client, remote = await make_policy({})
    response = await remote.put(client, SEND, body)
    assert response.status_code == 400 and response.json()["errcode"] == "M_BAD_JSON"


async def test_send_needs_x_matrix(make_policy: Any) -> None:
    """/send without authentication: 401."""
    _wire, client, _remote = await make_policy({})
    response = await client.put(SEND, json={"pdus": []})
    assert response.status_code == 401


def invite_of(remote: Any, user: str, room_id: str = "!new:remote.test") -> dict[str, Any]:
    return remote.pdu(type="m.room.member", state_key=user, room_id=room_id,
                      content={"membership": "invite"})


async def test_invite_of_the_policy_user_is_signed(make_policy: Any) -> None:
    """An invite of @policy: the event comes back with our federation signature, the
    room is recorded (the join that follows fails here: no make_join in the fake)."""
    wire, client, remote = await make_policy({})
    invite = invite_of(remote, f"@policy:{POLICY}")
    uri = f"/_matrix/federation/v2/invite/{invite['room_id']}/$x"
    response = await remote.put(client, uri, {"room_version": "12", "event": invite,
                                              "invite_room_state": []})
    assert response.status_code == 200, response.text
    signed = response.json()["event"]
    key_id = wire.keys.federation_key_id
    key = decode_verify_key_base64("ed25519", key_id[8:], wire.keys.federation_public_key)
    redacted = redact(signed, ROOM_VERSIONS["12"])
    verify_signed_json(redacted, POLICY, key)
    assert REMOTE in signed["signatures"]  # the inviter's signature is kept
    assert (await wire.rooms.get("!new:remote.test")).membership == "invited"


async def test_v1_invite_is_signed(make_policy: Any) -> None:
    """The v1 invite endpoint (older servers): the body is the event itself, the room
    version 1, the answer ``[200, {"event": ...}]`` with our federation signature."""
    wire, client, remote = await make_policy({})
    invite = remote.pdu(type="m.room.member", state_key=f"@policy:{POLICY}",
                        room_id="!old:remote.test", content={"membership": "invite"},
                        room_version="1", event_id="$inv:remote.test")
    response = await remote.put(client, "/_matrix/federation/v1/invite/!old:remote.test/"
                                "$inv:remote.test", invite)
    assert response.status_code == 200, response.text
    code, answer = response.json()
    key_id = wire.keys.federation_key_id
    key = decode_verify_key_base64("ed25519", key_id[8:], wire.keys.federation_public_key)
    verify_signed_json(redact(answer["event"], ROOM_VERSIONS["1"]), POLICY, key)
    assert code == 200 and (await wire.rooms.get("!old:remote.test")).room_version == "1"
    response = await remote.put(client, "/_matrix/federation/v1/invite/!r:x/$e", "other")
    assert (response.status_code, response.json()["errcode"]) == (400, "M_BAD_JSON")


@pytest.mark.parametrize(("body", "status", "errcode"), [
    ({"room_version": "99", "event": {}}, 400, "M_INCOMPATIBLE_ROOM_VERSION"),
    ({"room_version": "12", "event": "x"}, 400, "M_BAD_JSON"),
    ("other", 400, "M_BAD_JSON"),
])
async def test_invite_malformed(make_policy: Any, body: Any, status: int,
                                errcode: str) -> None:
    """A malformed invite gets the spec's errcode."""
    _wire, client, remote = await make_policy({})
    response = await remote.put(client, "/_matrix/federation/v2/invite/!r:x/$e", body)
    assert (response.status_code, response.json()["errcode"]) == (status, errcode)


async def test_invite_of_someone_else_is_403(make_policy: Any) -> None:
    """Only the policy user can be invited here."""
    _wire, client, remote = await make_policy({})
    body = {"room_version": "12", "event": invite_of(remote, f"@other:{POLICY}")}
    response = await remote.put(client, "/_matrix/federation/v2/invite/!r:x/$e", body)
    assert response.status_code == 403 and response.json()["errcode"] == "M_FORBIDDEN"


def test_cli_key_and_rooms(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`policy key` prints the m.room.policy content, the same key each time; `policy
    rooms` says there are none yet; without [policy] the command says what to add."""
    config = tmp_path / "servletkit.toml"
    config.write_text('[policy]\nserver_name = "127.0.0.1:9448"\n')
    assert main(["policy", "key", "--config", str(config)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["via"] == "127.0.0.1:9448" and first["public_keys"]["ed25519"]
    assert main(["policy", "--config", str(config), "key"]) == 0
    assert json.loads(capsys.readouterr().out) == first
    assert main(["policy", "rooms", "--config", str(config)]) == 0
    assert "no rooms yet" in capsys.readouterr().out
    config.write_text("")
    assert main(["policy", "key", "--config", str(config)]) == 1
    assert "no [policy] section" in capsys.readouterr().err


def test_cli_join_unreachable_is_one_line(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`policy join` against nothing: exit 1 with one line, no traceback."""
    config = tmp_path / "servletkit.toml"
    config.write_text('[policy]\nserver_name = "127.0.0.1:9448"\n')
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(["policy", "join", "!r:x", "--via", f"http://127.0.0.1:{port}",
                 "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "cannot join !r:x" in err and "Traceback" not in err


async def test_invites_only_from_the_configured_servers(make_policy: Any) -> None:
    """With ``[policy] invite_servers``, an invite from another server is refused 403
    ``M_FORBIDDEN`` and no room is recorded (its state could name servers whose keys would
    then be fetched first); one from a listed server is signed."""
    wire, client, remote = await make_policy({}, invite_servers=("friend.test",))
    invite = invite_of(remote, f"@policy:{POLICY}")
    uri = f"/_matrix/federation/v2/invite/{invite['room_id']}/$x"
    body = {"room_version": "12", "event": invite, "invite_room_state": []}
    response = await remote.put(client, uri, body)
    assert response.status_code == 403, response.text
    assert response.json()["errcode"] == "M_FORBIDDEN"
    assert "invite_servers" in response.json()["error"]
    assert await wire.rooms.get("!new:remote.test") is None
    wire.invite_servers = frozenset({REMOTE})
    assert (await remote.put(client, uri, body)).status_code == 200
    assert (await wire.rooms.get("!new:remote.test")).membership == "invited"
