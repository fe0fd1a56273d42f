"""The policy wire's HTTP endpoints (served on its own federation listener).

``/sign`` is the policy server's job; the key and well-known endpoints let
homeservers check it; ``/send`` and ``/invite`` are what a joined server must
answer. Each answers hostile input with a Matrix error, never a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Final

import orjson
from signedjson.sign import sign_json
from signedjson.types import VerifyKey
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from servletkit.wires.errors import MatrixError
from servletkit.wires.policy.federation import FederationClient, FetchesBusy
from servletkit.wires.policy.pdu import (
    ROOM_VERSIONS,
    Identity,
    PduError,
    RoomVersion,
    check_content_hash,
    check_shape,
    identify,
    signing_servers,
)
from servletkit.wires.policy.xmatrix import (
    AuthError,
    parse_authorization,
    verify,
    verify_event_signature,
)

if TYPE_CHECKING:
    from servletkit.wires.policy.wire import PolicyWire

log = logging.getLogger("servletkit.policy_wire")

MAX_SIGN_BYTES: Final = 96 * 1024
"""The largest ``/sign`` body: a PDU is at most 64 KiB; some slack for its encoding."""
MAX_TRANSACTION_BYTES: Final = 16 * 1024 * 1024
"""The largest ``/send`` or ``/invite`` body (50 PDUs and 100 EDUs at most)."""
KEY_VALIDITY_MS: Final = 24 * 3600 * 1000
"""How long our published federation key answer is valid."""


class _JsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


async def read_body(declared: str | None, chunks: AsyncIterator[bytes], limit: int) -> Any:
    """A request body as JSON: 413 ``M_TOO_LARGE`` above ``limit`` bytes (its declared
    Content-Length or what arrives), 400 ``M_NOT_JSON`` if it does not parse."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise MatrixError(413, "M_TOO_LARGE", f"the body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise MatrixError(413, "M_TOO_LARGE", f"the body is larger than {limit} bytes")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MatrixError(400, "M_NOT_JSON", "the body is not valid JSON") from None


async def read_json(request: Request, limit: int) -> Any:
    """:func:`read_body` of a Starlette request."""
    return await read_body(request.headers.get("content-length"), request.stream(), limit)


def _uri(scope: Mapping[str, Any]) -> str:
    """The request URI as the caller signed it (raw path and query)."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope.get("query_string") or b""
    return (raw + (b"?" + query if query else b"")).decode("latin-1")


async def authenticate(
    federation: FederationClient, server_name: str, scope: Mapping[str, Any],
    header: str | None, content: Any,
) -> str:
    """The calling server's name once its X-Matrix signature (``header``) verifies for
    the request ``scope``; else 401 ``M_UNAUTHORIZED`` (429 ``M_LIMIT_EXCEEDED`` if the
    caller's keys cannot be fetched now: :func:`verify_key`)."""
    try:
        auth = parse_authorization(header)
        if auth.destination is not None and auth.destination != server_name:
            raise AuthError(f"X-Matrix destination {auth.destination!r} is not this server "
                            f"({server_name!r})")
        key = await verify_key(federation, auth.origin, auth.key)
        verify(auth, key, scope["method"], _uri(scope), server_name, content)
    except AuthError as exc:
        log.info("policy wire: refused a %s %s: %s", scope["method"], scope["path"], exc)
        raise MatrixError(401, "M_UNAUTHORIZED", str(exc)) from None
    return auth.origin


async def verify_key(federation: FederationClient, server_name: str, key_id: str
                     ) -> VerifyKey:
    """:meth:`FederationClient.verify_key`, with too many key fetches at once answered
    ``429 M_LIMIT_EXCEEDED`` and its ``retry_after_ms``: the caller is not proven wrong
    (a 401 would say so), only not checkable yet, and a homeserver hands a 429 to its
    sender's client, which retries after that delay."""
    try:
        return await federation.verify_key(server_name, key_id)
    except FetchesBusy as busy:
        log.info("policy wire: %s", busy)
        raise MatrixError(429, "M_LIMIT_EXCEEDED", str(busy),
                          retry_after_ms=busy.retry_after_ms) from None


async def _authenticated(wire: PolicyWire, request: Request, content: Any) -> str:
    return await authenticate(wire.federation, wire.server_name, request.scope,
                              request.headers.get("authorization"), content)


async def sign_answer(wire: PolicyWire, body: Any, caller: str) -> Any:
    """The answer body to a ``/sign`` authenticated as ``caller``, or the
    :class:`MatrixError`."""
    pdu, version, identity = await _pdu_in_room(wire, body)
    await check_event_signatures(wire.federation, caller, pdu, version, identity)
    verdict = await wire.judge.verdict(pdu, version, identity)
    if verdict.signatures is None:
        raise MatrixError(400, "M_FORBIDDEN", verdict.reason or "refused by the policy server")
    return verdict.signatures


async def check_event_signatures(federation: FederationClient, caller: str,
                                 pdu: Mapping[str, Any], version: RoomVersion,
                                 identity: Identity) -> None:
    """``400 M_FORBIDDEN`` unless the PDU's signature by each server that must sign it
    verifies (:func:`signing_servers`: its sender's server; in room versions 1 and 2 also
    its event ID's server) — all but the caller's: a server asks again about an event it
    received, and a policy signature must not make a forged one look vouched for. The
    caller's own X-Matrix signature over the request already covers the whole PDU with
    that server's key: checking the event's signature by it too would cost a second
    ed25519 verification and prove nothing more (the verdict cache is keyed by the
    reference hash, which excludes signatures, so this check runs before it, on every
    ask)."""
    for server, role in signing_servers(pdu, version, identity).items():
        if server == caller:
            continue
        signatures = pdu.get("signatures")
        theirs = signatures.get(server) if isinstance(signatures, Mapping) else None
        keys = {}
        for key_id in theirs if isinstance(theirs, Mapping) else ():
            if isinstance(key_id, str) and key_id.startswith("ed25519:"):
                with contextlib.suppress(AuthError):
                    keys[key_id] = await verify_key(federation, server, key_id)
        try:
            verify_event_signature(pdu, server, role, identity.redacted_json, keys)
        except AuthError as exc:
            log.info("policy wire: refused a /sign from %s: %s", caller, exc)
            raise MatrixError(400, "M_FORBIDDEN", str(exc)) from None


SIGN_PATHS: Final = frozenset({"/_matrix/policy/v1/sign",
                               "/_matrix/policy/unstable/org.matrix.msc4284/sign"})
_JSON_HEADER: Final = (b"content-type", b"application/json")


def with_fast_sign(wire: PolicyWire, app: ASGIApp) -> ASGIApp:
    """``app`` with ``POST /sign`` answered before Starlette's routing and middleware.

    ``/sign`` is the one hot path (every event of every protected room, from every
    server in it): answered here it costs the checks and the two signature
    operations and little else. Everything else, and any other method on the
    ``/sign`` paths, goes to ``app``.
    """

    async def fast(scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] != "POST"
                or scope["path"] not in SIGN_PATHS):
            await app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        header = headers.get(b"authorization")

        first = await receive()

        async def chunks() -> AsyncIterator[bytes]:
            message = first
            while message["type"] != "http.disconnect":
                yield message.get("body", b"")
                if not message.get("more_body", False):
                    return
                message = await receive()

        try:
            if not first.get("more_body", False) and len(body := first.get("body", b"")) <= (
                    MAX_SIGN_BYTES):  # the usual case: the whole body in one message
                try:
                    body = orjson.loads(body)
                except orjson.JSONDecodeError:
                    raise MatrixError(400, "M_NOT_JSON", "the body is not valid JSON") from None
            else:
                body = await read_body(
                    None if declared is None else declared.decode("latin-1"), chunks(),
                    MAX_SIGN_BYTES)
            caller = await authenticate(wire.federation, wire.server_name, scope,
                                        None if header is None else header.decode("latin-1"),
                                        body)
            status, payload = 200, orjson.dumps(await sign_answer(wire, body, caller))
        except MatrixError as exc:
            status, payload = exc.status, orjson.dumps(
                {"errcode": exc.errcode, "error": exc.error, **exc.extra})
        except Exception:
            log.exception("policy wire: /sign failed")
            status, payload = 500, b'{"errcode":"M_UNKNOWN","error":"Internal server error"}'
        await send({"type": "http.response.start", "status": status, "headers": [
            _JSON_HEADER, (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    return fast


def routes(wire: PolicyWire) -> list[BaseRoute]:
    """The federation listener's routes."""

    async def server_keys(request: Request) -> Response:
        keys = wire.keys
        answer = {
            "server_name": wire.server_name,
            "valid_until_ts": int(time.time() * 1000) + KEY_VALIDITY_MS,
            "verify_keys": {keys.federation_key_id: {"key": keys.federation_public_key}},
            "old_verify_keys": {},
        }
        return _JsonResponse(sign_json(answer, wire.server_name, keys.federation))

    async def well_known(request: Request) -> Response:
        return _JsonResponse({"public_keys": {"ed25519": wire.keys.policy_public_key}},
                             headers={"Access-Control-Allow-Origin": "*"})

    async def well_known_unstable(request: Request) -> Response:
        return _JsonResponse({"public_key": wire.keys.policy_public_key},
                             headers={"Access-Control-Allow-Origin": "*"})

    async def sign(request: Request) -> Response:  # (POST is answered by with_fast_sign)
        body = await read_json(request, MAX_SIGN_BYTES)
        caller = await _authenticated(wire, request, body)
        return _JsonResponse(await sign_answer(wire, body, caller))

    async def send(request: Request) -> Response:
        body = await read_json(request, MAX_TRANSACTION_BYTES)
        origin = await _authenticated(wire, request, body)
        pdus = body.get("pdus") if isinstance(body, Mapping) else None
        if not isinstance(pdus, list):
            raise MatrixError(400, "M_BAD_JSON", "pdus: must be an array")
        return _JsonResponse({"pdus": await wire.received(origin, pdus)})

    async def invite(request: Request) -> Response:
        body = await read_json(request, MAX_TRANSACTION_BYTES)
        origin = await _authenticated(wire, request, body)
        if not isinstance(body, Mapping):
            raise MatrixError(400, "M_BAD_JSON", "the body must be an object")
        return _JsonResponse({"event": await _accept_invite(wire, origin, body.get("event"),
                                                      body.get("room_version"))})

    async def invite_v1(request: Request) -> Response:
        """The v1 form: the body is the event, the room version 1 (as Synapse assumes: v1
        carries none), the answer ``[200, {"event": ...}]``."""
        body = await read_json(request, MAX_TRANSACTION_BYTES)
        origin = await _authenticated(wire, request, body)
        return _JsonResponse([200, {"event": await _accept_invite(wire, origin, body, "1")}])

    async def version(request: Request) -> Response:
        return _JsonResponse({"server": {"name": "servletkit policy wire", "version": "0.1"}})

    return [
        Route("/_matrix/key/v2/server", server_keys, methods=["GET"]),
        Route("/.well-known/matrix/policy_server", well_known, methods=["GET"]),
        Route("/.well-known/matrix/org.matrix.msc4284.policy_server", well_known_unstable,
              methods=["GET"]),
        Route("/_matrix/policy/v1/sign", sign, methods=["POST"]),
        Route("/_matrix/policy/unstable/org.matrix.msc4284/sign", sign, methods=["POST"]),
        # a transaction ID is opaque: a "/" in it (sent as %2F) must reach the endpoint
        Route("/_matrix/federation/v1/send/{txn_id:path}", send, methods=["PUT"]),
        Route("/_matrix/federation/v2/invite/{room_id}/{event_id}", invite, methods=["PUT"]),
        Route("/_matrix/federation/v1/invite/{room_id}/{event_id}", invite_v1, methods=["PUT"]),
        Route("/_matrix/federation/v1/version", version, methods=["GET"]),
    ]


async def _accept_invite(wire: PolicyWire, origin: str, event: Any, room_version: Any) -> Any:
    """The invite ``event`` signed by us (we then join), or the Matrix error."""
    version = ROOM_VERSIONS.get(str(room_version))
    if version is None:
        raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION",
                          f"room version {room_version!r} is not supported",
                          room_version=room_version)
    try:
        event = check_shape(event)
        check_content_hash(event)
    except PduError as exc:
        raise MatrixError(400, "M_BAD_JSON", f"event: {exc}") from None
    try:
        return await wire.accept_invite(origin, event, version)
    except PduError as exc:
        raise MatrixError(403, "M_FORBIDDEN", str(exc)) from None


async def _pdu_in_room(wire: PolicyWire, body: Any) -> tuple[dict[str, Any], RoomVersion, Identity]:
    """The PDU of a ``/sign`` request and its room's version, or the Matrix error."""
    try:
        pdu = check_shape(body)
    except PduError as exc:
        raise MatrixError(400, "M_BAD_JSON", str(exc)) from None
    room = await wire.rooms.get(pdu["room_id"])
    if room is None:
        raise MatrixError(404, "M_NOT_FOUND", f"{pdu['room_id']} is not a room this policy "
                          "server serves")
    version = ROOM_VERSIONS.get(room.room_version)
    if version is None:
        raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION",
                          f"room version {room.room_version!r} is not supported")
    try:
        identity = identify(pdu, version, check_content_hash(pdu))
    except PduError as exc:
        raise MatrixError(400, "M_BAD_JSON", str(exc)) from None
    return pdu, version, identity


