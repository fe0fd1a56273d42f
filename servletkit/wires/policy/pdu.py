"""Federation PDUs: the redaction algorithm, content and reference hashes, event IDs.

What the policy wire needs of the Matrix event format, per room version
(spec: "Room versions", "Signing Events", "Calculating the reference hash";
Synapse: ``synapse/events/utils.py`` ``prune_event_dict``). The tests check
every function against Synapse's own on the same events.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
import orjson
from canonicaljson import encode_canonical_json
from unpaddedbase64 import encode_base64

MAX_PDU_BYTES: Final = 65_536
"""The largest PDU (canonical JSON, signatures included) the spec allows."""


@attrs.frozen
class RoomVersion:
    """What differs between room versions for hashing, IDs and redaction."""

    identifier: str
    event_id_in_body: bool  # v1, v2: the sender chooses the event ID, it is in the PDU
    url_safe_event_ids: bool  # v4+: "$" + URL-safe base64 of the reference hash
    keeps_aliases: bool  # v1-v5: m.room.aliases keeps `aliases`
    keeps_allow: bool  # v8+: m.room.join_rules keeps `allow`
    keeps_authorised_via: bool  # v9+: m.room.member keeps `join_authorised_via_users_server`
    updated_redactions: bool  # v11+: MSC2176, MSC3821, MSC3989, MSC2174, MSC2175
    create_without_room_id: bool  # v12+ (MSC4291): the room ID is the create event's hash


def _version(identifier: str, number: int) -> RoomVersion:
    return RoomVersion(identifier, number <= 2, number >= 4, number <= 5, number >= 8,
                       number >= 9, number >= 11, number >= 12)


ROOM_VERSIONS: Final[Mapping[str, RoomVersion]] = {
    str(n): _version(str(n), n) for n in range(1, 13)
}
"""The stable room versions the policy wire understands."""


Encoder = Callable[[Any], bytes]
"""A canonical JSON encoder."""


def fast_canonical_json(value: Any) -> bytes:
    """Matrix canonical JSON by orjson (sorted keys, compact, UTF-8): byte for byte what
    ``canonicaljson`` gives for strings, integers, booleans and nulls, about ten times
    faster. Floats (forbidden in events from room version 6) may differ in their exponent
    (``1e-7`` against ``1e-07``), so whatever is checked against a sender's hash or
    signature falls back to :data:`REFERENCE_ENCODER` when the fast bytes do not match
    (:func:`check_content_hash`, :func:`servletkit.wires.policy.xmatrix.verify`)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits
        return encode_canonical_json(value)


REFERENCE_ENCODER: Final[Encoder] = encode_canonical_json
"""``canonicaljson``: what every homeserver signs and hashes with."""
ENCODERS: Final[tuple[Encoder, ...]] = (fast_canonical_json, REFERENCE_ENCODER)
"""The encoders tried in turn, fast first, when checking a sender's bytes."""


class PduError(ValueError):
    """A PDU that is not well formed for its room version (answered ``400 M_BAD_JSON``)."""


_KEPT_V1: Final = frozenset({
    "event_id", "type", "room_id", "sender", "state_key", "content", "hashes", "signatures",
    "depth", "prev_events", "prev_state", "auth_events", "origin", "origin_server_ts",
    "membership",
})
_KEPT_V11: Final = _KEPT_V1 - {"origin", "membership", "prev_state"}
_POWER_LEVELS: Final = ("ban", "events", "events_default", "kick", "redact", "state_default",
                        "users", "users_default")


def redact(pdu: Mapping[str, Any], version: RoomVersion) -> dict[str, Any]:
    """The event as the redaction algorithm of ``version`` leaves it (``unsigned`` dropped)."""
    kept = _KEPT_V11 if version.updated_redactions else _KEPT_V1
    redacted = {key: value for key, value in pdu.items() if key in kept}
    content = pdu.get("content")
    content = content if isinstance(content, Mapping) else {}
    redacted["content"] = _redacted_content(pdu.get("type"), content, version)
    if version.create_without_room_id and pdu.get("type") == "m.room.create":
        redacted.pop("room_id", None)
    return redacted


def _redacted_content(
    event_type: Any, content: Mapping[str, Any], version: RoomVersion
) -> dict[str, Any]:
    keys: tuple[str, ...] = ()
    if event_type == "m.room.member":
        keys = ("membership", "join_authorised_via_users_server") if (
            version.keeps_authorised_via) else ("membership",)
        if version.updated_redactions:
            kept = {key: content[key] for key in keys if key in content}
            invite = content.get("third_party_invite")
            if isinstance(invite, Mapping) and "signed" in invite:
                kept["third_party_invite"] = {"signed": invite["signed"]}
            return kept
    elif event_type == "m.room.create":
        if version.updated_redactions:
            return dict(content)
        keys = ("creator",)
    elif event_type == "m.room.join_rules":
        keys = ("join_rule", "allow") if version.keeps_allow else ("join_rule",)
    elif event_type == "m.room.power_levels":
        keys = (*_POWER_LEVELS, "invite") if version.updated_redactions else _POWER_LEVELS
    elif event_type == "m.room.aliases" and version.keeps_aliases:
        keys = ("aliases",)
    elif event_type == "m.room.history_visibility":
        keys = ("history_visibility",)
    elif event_type == "m.room.redaction" and version.updated_redactions:
        keys = ("redacts",)
    return {key: content[key] for key in keys if key in content}


_NOT_HASHED: Final = frozenset({"unsigned", "signatures", "hashes",
                               # as Synapse: legacy and internal keys some servers leave in
                               "age_ts", "outlier", "destinations"})


def content_hash(pdu: Mapping[str, Any], encode: Encoder = REFERENCE_ENCODER) -> str:
    """The unpadded base64 SHA-256 the PDU's ``hashes.sha256`` must be."""
    hashed = {key: value for key, value in pdu.items() if key not in _NOT_HASHED}
    return encode_base64(hashlib.sha256(encode(hashed)).digest())


def check_content_hash(pdu: Mapping[str, Any]) -> Encoder:
    """Raise :class:`PduError` unless ``hashes.sha256`` matches the PDU; else the encoder
    that reproduced the sender's bytes (the fast one unless a float encodes differently):
    the event's other canonical forms (:func:`identify`) are encoded with it."""
    hashes = pdu.get("hashes")
    claimed = hashes.get("sha256") if isinstance(hashes, Mapping) else None
    if not isinstance(claimed, str):
        raise PduError("hashes.sha256: missing (every PDU carries its content hash)")
    claimed = claimed.rstrip("=")
    for encode in ENCODERS:
        if claimed == content_hash(pdu, encode):
            return encode
    raise PduError("hashes.sha256: does not match the event's content")


@attrs.frozen
class Identity:
    """What identifies an event: the canonical JSON of its redacted form (without
    ``signatures``: what the reference hash and every event signature cover), that
    hash, and its event ID."""

    redacted_json: bytes
    reference_hash: bytes
    event_id: str


def identify(pdu: Mapping[str, Any], version: RoomVersion,
             encode: Encoder = REFERENCE_ENCODER) -> Identity:
    """The event's :class:`Identity`: the ID computed from its reference hash (v3+) or
    read from it (v1, v2). ``encode``: the one :func:`check_content_hash` returned for it,
    if it was checked."""
    redacted = redact(pdu, version)
    redacted.pop("signatures", None)
    redacted.pop("age_ts", None)
    canonical = encode(redacted)
    digest = hashlib.sha256(canonical).digest()
    if version.event_id_in_body:
        value = pdu.get("event_id")
        if not isinstance(value, str):
            raise PduError("event_id: missing (room versions 1 and 2 carry it in the event)")
        if not value.startswith("$") or not value.partition(":")[2]:
            raise PduError("event_id: not $opaque:server (room versions 1 and 2)")
        return Identity(canonical, digest, value)
    return Identity(canonical, digest,
                    "$" + encode_base64(digest, urlsafe=version.url_safe_event_ids))


def reference_hash(pdu: Mapping[str, Any], version: RoomVersion) -> bytes:
    """The SHA-256 of the redacted event without ``signatures`` (and ``unsigned``)."""
    return identify(pdu, version).reference_hash


def event_id(pdu: Mapping[str, Any], version: RoomVersion) -> str:
    """The event's ID: computed from its reference hash (v3+) or read from it (v1, v2)."""
    return identify(pdu, version).event_id


def signing_servers(pdu: Mapping[str, Any], version: RoomVersion, identity: Identity
                    ) -> dict[str, str]:
    """The servers whose signatures the event must carry (spec, server-server API,
    "Validating hashes and signatures on received events"), each with its role: its
    sender's server; in room versions 1 and 2 also its event ID's server (the name after
    the first colon of ``$opaque:server``), when that is another."""
    servers = {str(pdu["sender"]).partition(":")[2]: "sender's server"}
    if version.event_id_in_body:
        servers.setdefault(identity.event_id.partition(":")[2], "event ID's server")
    return servers


def add_content_hash(pdu: dict[str, Any]) -> dict[str, Any]:
    """Set ``hashes.sha256`` on a PDU being built (our own join or invite answer)."""
    pdu["hashes"] = {"sha256": content_hash(pdu)}
    return pdu


def check_shape(pdu: Any) -> dict[str, Any]:
    """The PDU if it has the fields every room version requires, else :class:`PduError`."""
    if not isinstance(pdu, dict):
        raise PduError(f"the body must be a JSON object (a PDU), got {type(pdu).__name__}")
    for key, kind in (("room_id", str), ("type", str), ("sender", str), ("content", dict),
                      ("origin_server_ts", int)):
        if not isinstance(pdu.get(key), kind):
            raise PduError(f"{key}: missing or not a {kind.__name__}")
    state_key = pdu.get("state_key")
    if state_key is not None and not isinstance(state_key, str):
        raise PduError("state_key: not a string")
    if "unsigned" in pdu and not isinstance(pdu["unsigned"], dict):
        raise PduError("unsigned: not an object")
    return pdu
