"""The PDU functions agree with Synapse's own (redaction, hashes, event IDs, signatures)."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest
from canonicaljson import encode_canonical_json
from signedjson.key import generate_signing_key
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.crypto.event_signing import compute_content_hash, compute_event_signature
from synapse.events import make_event_from_dict
from synapse.synapse_rust.events import redact_event_dict
from unpaddedbase64 import encode_base64

from servletkit.wires.policy.pdu import (
    REFERENCE_ENCODER,
    ROOM_VERSIONS,
    PduError,
    add_content_hash,
    check_content_hash,
    check_shape,
    event_id,
    fast_canonical_json,
    identify,
    redact,
)
from servletkit.wires.policy.verdicts import Judge

VERSIONS = sorted(ROOM_VERSIONS, key=int)

CONTENTS: dict[str, dict[str, Any]] = {
    "m.room.message": {"msgtype": "m.text", "body": "hi", "m.relates_to": {"x": 1}},
    "m.room.member": {"membership": "join", "displayname": "A",
                      "join_authorised_via_users_server": "@b:x",
                      "third_party_invite": {"signed": {"token": "t"}, "display_name": "d"}},
    "m.room.create": {"creator": "@a:x", "room_version": "9", "m.federate": True},
    "m.room.join_rules": {"join_rule": "restricted", "allow": [{"type": "m.room_membership"}]},
    "m.room.power_levels": {"ban": 50, "invite": 0, "users": {"@a:x": 100}, "notifications": {}},
    "m.room.aliases": {"aliases": ["#a:x"], "other": 1},
    "m.room.history_visibility": {"history_visibility": "shared", "x": 1},
    "m.room.redaction": {"redacts": "$e", "reason": "spam"},
    "m.room.policy": {"via": "p.x", "public_keys": {"ed25519": "k"}},
}


def pdu_of(event_type: str, version: str) -> dict[str, Any]:
    pdu = {
        "room_id": "!r:x", "type": event_type, "sender": "@a:x",
        "content": copy.deepcopy(CONTENTS[event_type]), "origin_server_ts": 1_700_000_000_000,
        "depth": 3, "prev_events": ["$p"], "auth_events": ["$a"], "origin": "x",
        "membership": "join", "prev_state": [], "unsigned": {"age_ts": 5}, "junk": 1,
        "signatures": {"x": {"ed25519:a": "sig"}},
    }
    if event_type != "m.room.message":
        pdu["state_key"] = ""
    if event_type == "m.room.create" and ROOM_VERSIONS[version].create_without_room_id:
        del pdu["room_id"]
    if ROOM_VERSIONS[version].event_id_in_body:
        pdu["event_id"] = "$ev:x"
        pdu["prev_events"] = [["$p:x", {"sha256": "abc"}]]  # v1, v2: [id, hashes] pairs
        pdu["auth_events"] = [["$a:x", {"sha256": "abc"}]]
    return add_content_hash(pdu)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("event_type", sorted(CONTENTS))
def test_redaction_hash_and_id_match_synapse(version: str, event_type: str) -> None:
    """Redaction, content hash and event ID are Synapse's for every room version and type."""
    pdu = pdu_of(event_type, version)
    synapse_version = KNOWN_ROOM_VERSIONS[version]
    expected = redact_event_dict(synapse_version, copy.deepcopy(pdu))
    expected.pop("unsigned", None)
    assert redact(pdu, ROOM_VERSIONS[version]) == expected
    _, digest = compute_content_hash(copy.deepcopy(pdu), hashlib.sha256)
    assert pdu["hashes"]["sha256"] == encode_base64(digest)
    assert event_id(pdu, ROOM_VERSIONS[version]) == make_event_from_dict(
        copy.deepcopy(pdu), synapse_version).event_id


@pytest.mark.parametrize("version", ["6", "10", "11", "12"])
def test_policy_signature_is_synapses(version: str) -> None:
    """The policy signature equals Synapse's compute_event_signature with the same key."""
    key = generate_signing_key("policy_server")
    pdu = pdu_of("m.room.message", version)
    judge = Judge(dispatcher=None, server_name="p.x", policy_key=key)  # type: ignore[arg-type]
    expected = compute_event_signature(KNOWN_ROOM_VERSIONS[version], copy.deepcopy(pdu), "p.x",
                                       key)
    assert judge.sign(pdu, ROOM_VERSIONS[version]) == {"p.x": expected["p.x"]}


def test_content_hash_mismatch_is_refused() -> None:
    """A PDU whose content changed after hashing fails the check; an intact one passes."""
    pdu = pdu_of("m.room.message", "12")
    check_content_hash(pdu)
    pdu["content"]["body"] = "changed"
    with pytest.raises(PduError, match="does not match"):
        check_content_hash(pdu)
    del pdu["hashes"]
    with pytest.raises(PduError, match="missing"):
        check_content_hash(pdu)


@pytest.mark.parametrize("bad", [[], "x", {"room_id": 1}, {"room_id": "!r", "type": "t",
                                  "sender": "@s:x", "content": [], "origin_server_ts": 1}])
def test_shape_check_names_the_problem(bad: Any) -> None:
    """Not an object, or a required field of the wrong type: a PduError."""
    with pytest.raises(PduError):
        check_shape(bad)


def test_fast_encoder_is_canonicaljson() -> None:
    """orjson's sorted encoding is canonicaljson's byte for byte on what events hold:
    every ASCII character (escapes), other planes, nesting, integers beyond 53 and 64
    bits; a PDU it checks is then hashed and identified with it."""
    text = "".join(map(chr, range(128))) + "\u00a0\u2028\u2029\ufeff\U0001f600é"
    value = {"b": [text, {"z": None, "a": True}], "a": [2**53, -(2**63), 2**70, 0, False],
             text: {"": ""}}
    assert fast_canonical_json(value) == encode_canonical_json(value)
    pdu = pdu_of("m.room.message", "12")
    assert check_content_hash(pdu) is fast_canonical_json


def test_float_falls_back_to_canonicaljson() -> None:
    """A float orjson renders otherwise (``1e-7``, canonicaljson ``1e-07``; legal in room
    versions 1-5): the content hash is checked, and the event identified, with
    canonicaljson, so the event ID stays Synapse's."""
    pdu = pdu_of("m.room.message", "5")
    pdu["content"]["tiny"] = 1e-07
    add_content_hash(pdu)
    assert fast_canonical_json(1e-07) != encode_canonical_json(1e-07)
    encode = check_content_hash(pdu)
    assert encode is REFERENCE_ENCODER
    assert identify(pdu, ROOM_VERSIONS["5"], encode).event_id == make_event_from_dict(
        copy.deepcopy(pdu), KNOWN_ROOM_VERSIONS["5"]).event_id
