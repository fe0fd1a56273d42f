"""The module wire's protocol: JSON frames between the Synapse module and the container.

The Synapse module (:mod:`servletkit.synapse`) keeps one TCP connection open to
the container and multiplexes every callback over it. Stdlib only: both sides
import this module, and the Synapse side must stay light.

Framing: each frame is a 4-byte big-endian length, then that many bytes of a
UTF-8 JSON object (the length prefix of Twisted's ``Int32StringReceiver``).

Conversation:

1. The module sends ``{"op": "hello", "protocol": 1, "secret": "..."}``. The
   container compares the secret in constant time and answers
   ``{"op": "hello", "protocol": 1}``, or an error frame (below) and closes.
2. Then any number of requests, concurrently. A request is
   ``{"id": N, "op": OP, ...fields}``, where the hook table
   (:data:`servletkit.hooks.specs.HOOKS`) gives each interception hook's op and
   fields (a :class:`~servletkit.hooks.table.ModuleCall`): ``event``:
   ``{"event": <client event>}``; ``join``: ``{"user_id", "room_id"}``;
   ``invite``: ``{"inviter_id", "invitee_id", "room_id"}``; ``create_room``:
   ``{"user_id", "request"}``; ``connect``: ``{"user_id", "device_id"}``. The
   container answers each, in any order, with the same ``id``:

   * ``{"id": N}`` — go ahead (every plugin allowed, or none had an opinion);
   * ``{"id": N, "modify": {...}}`` — go ahead with this event content;
   * ``{"id": N, "veto": {"errcode": "...", "reason": "..."}}`` — refuse;
   * ``{"id": N, "error": {"errcode": "...", "error": "..."}}`` — the request
     was malformed; the module applies its failure policy.

   A request may carry ``"then": {"op": OP, ...fields}``, a second request
   answered in the same frame unless the first is refused: the answer gains
   ``"then": <its answer>`` (a join with its forecast membership event,
   :mod:`servletkit.synapse.forecast`). A ``then`` has no ``then`` of its own.

A frame that is not a JSON object, or longer than :data:`MAX_FRAME`, ends the
connection (after an error frame, when the container can still send one).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from typing import Any, Final

PROTOCOL_VERSION: Final = 1

MAX_FRAME: Final = 8 * 1024 * 1024
"""Largest frame either side accepts, in bytes (a Matrix event is at most 64 KiB)."""

HEADER: Final = struct.Struct(">I")
"""The length prefix of a frame."""

class ProtocolError(ValueError):
    """A frame that breaks the protocol; the connection cannot go on."""


def jsonable(value: Any) -> Any:
    """The JSON encoders' fallback: mappings become objects, tuples and frozensets arrays.

    Synapse hands out immutable mappings (frozen event content); plugins may too.
    """
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple | frozenset):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_encoder: Final = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), default=jsonable, allow_nan=False
)


def frame(body: bytes) -> bytes:
    """One frame: the length prefix, then ``body`` (UTF-8 JSON)."""
    return HEADER.pack(len(body)) + body


def encode(message: Mapping[str, Any]) -> bytes:
    """One frame: the length prefix and the JSON body of ``message``."""
    return frame(_encoder.encode(message).encode())


def decode(body: bytes | memoryview, loads: Callable[[Any], Any] = json.loads) -> dict[str, Any]:
    """The JSON object of one frame body; :class:`ProtocolError` if it is not one.

    ``loads`` parses the body: the container passes ``orjson.loads`` (4x faster, and
    it reads a memoryview without a copy); the Synapse side keeps the stdlib.
    """
    try:
        message = loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"frame must be a JSON object, got {type(message).__name__}")
    return message
