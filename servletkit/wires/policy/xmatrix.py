"""X-Matrix request authentication (spec: server-server API, "Request Authentication").

A server signs ``{"method", "uri", "origin", "destination", "content"}`` with
its federation key and sends the signature in an ``Authorization: X-Matrix``
header; the receiver checks it with the key the origin publishes on
``/_matrix/key/v2/server``.
"""

from __future__ import annotations

import re
from typing import Any, Final

import attrs
from signedjson.sign import SignatureVerifyException, sign_json, verify_signed_json
from signedjson.types import SigningKey, VerifyKey

_PARAM: Final = re.compile(r'\s*([A-Za-z]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s"]*))\s*(?:,|$)')


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
    """The X-Matrix parameters of ``header``; :class:`AuthError` if it is not one."""
    if not header:
        raise AuthError("missing Authorization header (X-Matrix federation authentication)")
    scheme, _, rest = header.partition(" ")
    if scheme != "X-Matrix":
        raise AuthError("Authorization: expected the X-Matrix scheme")
    params: dict[str, str] = {}
    position = 0
    rest = rest.strip()
    while position < len(rest):
        match = _PARAM.match(rest, position)
        if match is None or match.end() == position:
            raise AuthError("Authorization: malformed X-Matrix parameters")
        quoted, bare = match.group(2), match.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        params[match.group(1).lower()] = value
        position = match.end()
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
    """Raise :class:`AuthError` unless ``auth.sig`` signs this request with ``verify_key``."""
    signed = request_json(method, uri, auth.origin, destination, content)
    signed["signatures"] = {auth.origin: {auth.key: auth.sig}}
    try:
        verify_signed_json(signed, auth.origin, verify_key)
    except SignatureVerifyException:
        raise AuthError(f"X-Matrix signature by {auth.origin} ({auth.key}) does not verify "
                        "for this request") from None


def authorization(
    method: str, uri: str, origin: str, destination: str, key: SigningKey, content: Any = None
) -> str:
    """The ``Authorization`` header value for our own request."""
    signed = sign_json(request_json(method, uri, origin, destination, content), origin, key)
    key_id = f"{key.alg}:{key.version}"
    sig = signed["signatures"][origin][key_id]
    return (f'X-Matrix origin="{origin}",destination="{destination}",key="{key_id}",'
            f'sig="{sig}"')
