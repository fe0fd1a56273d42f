"""X-Matrix request authentication (spec: server-server API, "Request Authentication").

A server signs ``{"method", "uri", "origin", "destination", "content"}`` with
its federation key and sends the signature in an ``Authorization: X-Matrix``
header; the receiver checks it with the key the origin publishes on
``/_matrix/key/v2/server``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from nacl.exceptions import BadSignatureError
from signedjson.sign import sign_json
from signedjson.types import SigningKey, VerifyKey
from unpaddedbase64 import decode_base64

from servletkit.wires.policy.pdu import ENCODERS


class AuthError(Exception):
    """A request whose X-Matrix authentication is missing or wrong (401 ``M_UNAUTHORIZED``)."""


@attrs.frozen
class XMatrix:
    """The parameters of one ``Authorization: X-Matrix`` header."""

    origin: str
    destination: str | None
    key: str
    sig: str


def parse_authorization(header: str | None) -> XMatrix:
    """The X-Matrix parameters of ``header``; :class:`AuthError` if it is not one.

    Parsed as Synapse parses it: ``name=value`` pairs separated by commas, values
    optionally in double quotes (none of origin, destination, key and sig may contain a
    comma or a quote).
    """
    if not header:
        raise AuthError("missing Authorization header (X-Matrix federation authentication)")
    scheme, _, rest = header.partition(" ")
    if scheme != "X-Matrix":
        raise AuthError("Authorization: expected the X-Matrix scheme")
    params: dict[str, str] = {}
    for pair in rest.split(","):
        name, equals, value = pair.partition("=")
        name = name.strip().lower()
        if not equals or not name:
            raise AuthError("Authorization: malformed X-Matrix parameters")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if '"' in value:
            raise AuthError(f"Authorization: malformed X-Matrix parameter {name}")
        params[name] = value
    try:
        return XMatrix(params["origin"], params.get("destination"), params["key"], params["sig"])
    except KeyError as missing:
        raise AuthError(f"Authorization: X-Matrix without {missing.args[0]}") from None


def request_json(
    method: str, uri: str, origin: str, destination: str, content: Any = None
) -> dict[str, Any]:
    """The JSON object an X-Matrix signature covers."""
    signed: dict[str, Any] = {"method": method, "uri": uri, "origin": origin,
                              "destination": destination}
    if content is not None:
        signed["content"] = content
    return signed


def verify(
    auth: XMatrix, verify_key: VerifyKey, method: str, uri: str, destination: str,
    content: Any = None,
) -> None:
    """Raise :class:`AuthError` unless ``auth.sig`` signs this request with ``verify_key``.

    What ``signedjson.verify_signed_json`` checks, on the request's canonical JSON
    encoded by the fast encoder first (the reference one only if that does not verify:
    see :func:`servletkit.wires.policy.pdu.fast_canonical_json`)."""
    signed = request_json(method, uri, auth.origin, destination, content)
    try:
        signature = decode_base64(auth.sig)
    except ValueError:
        raise AuthError(f"X-Matrix sig by {auth.origin} is not unpadded base64") from None
    for encode in ENCODERS:
        try:
            verify_key.verify(encode(signed), signature)
            return
        except (BadSignatureError, ValueError):
            continue
    raise AuthError(f"X-Matrix signature by {auth.origin} ({auth.key}) does not verify "
                    "for this request")


def authorization(
    method: str, uri: str, origin: str, destination: str, key: SigningKey, content: Any = None
) -> str:
    """The ``Authorization`` header value for our own request."""
    signed = sign_json(request_json(method, uri, origin, destination, content), origin, key)
    key_id = f"{key.alg}:{key.version}"
    sig = signed["signatures"][origin][key_id]
    return (f'X-Matrix origin="{origin}",destination="{destination}",key="{key_id}",'
            f'sig="{sig}"')


def verify_event_signature(pdu: Mapping[str, Any], server: str, role: str,
                           redacted_json: bytes, keys: Mapping[str, VerifyKey]) -> None:
    """Raise :class:`AuthError` unless one of ``keys`` (key ID → ``server``'s key) verifies
    ``server``'s signature in ``pdu["signatures"]`` over ``redacted_json`` (the redacted
    event without ``signatures``, canonical: what a server signs); ``role``: what
    ``server`` is to the event, for the message (``"sender's server"``)."""
    signatures = pdu.get("signatures")
    theirs = signatures.get(server) if isinstance(signatures, Mapping) else None
    if not isinstance(theirs, Mapping):
        raise AuthError(f"the event carries no signature by its {role} {server}")
    for key_id, key in keys.items():
        signature = theirs.get(key_id)
        if not isinstance(signature, str):
            continue
        try:
            key.verify(redacted_json, decode_base64(signature))
            return
        except (BadSignatureError, ValueError):
            continue
    raise AuthError(f"the event's signature by its {role} {server} does not verify")
