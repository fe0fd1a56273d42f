"""Shared helpers of the policy wire's tests: a fake remote homeserver with real keys,
PDUs signed by it, and X-Matrix requests from it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import uvicorn
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json
from signedjson.types import SigningKey

from servletkit.testing.waiting import eventually
from servletkit.wires.policy.discovery import SrvAnswer, SrvRecord
from servletkit.wires.policy.pdu import ROOM_VERSIONS, add_content_hash, redact
from servletkit.wires.policy.xmatrix import authorization

REMOTE = "remote.test"
POLICY = "policy.test"
ROOM = "!protected:remote.test"
_depth = itertools.count(10)


class RemoteServer:
    """A homeserver that publishes its key (over an httpx mock transport) and signs PDUs."""

    def __init__(self, name: str = REMOTE) -> None:
        self.name = name
        self.key: SigningKey = generate_signing_key("a_remote")
        self.key_requests = 0

    def keys_answer(self) -> dict[str, Any]:
        return sign_json({
            "server_name": self.name,
            "valid_until_ts": int(time.time() * 1000) + 3_600_000,
            "verify_keys": {"ed25519:a_remote": {
                "key": encode_verify_key_base64(get_verify_key(self.key))}},
            "old_verify_keys": {},
        }, self.name, self.key)

    def transport(self, *others: RemoteServer, fallback: httpx.AsyncBaseTransport | None = None
                  ) -> httpx.AsyncBaseTransport:
        """Serves the key endpoint of this server and of ``others``, by host name; other
        servers' requests go to ``fallback`` (default: a 404)."""
        servers = {server.name: server for server in (self, *others)}

        async def handle(request: httpx.Request) -> httpx.Response:
            server = servers.get(request.url.host)
            if server is not None and request.url.path == "/_matrix/key/v2/server":
                server.key_requests += 1
                return httpx.Response(200, json=server.keys_answer())
            if server is None and fallback is not None:
                return await fallback.handle_async_request(request)
            return httpx.Response(404, json={"errcode": "M_UNRECOGNIZED"})

        return httpx.MockTransport(handle)

    def pdu(self, body: str = "hello", room_id: str = ROOM, room_version: str = "12",
            **extra: Any) -> dict[str, Any]:
        """A signed, hashed ``m.room.message`` PDU from ``@alice`` on this server."""
        pdu: dict[str, Any] = {
            "room_id": room_id, "type": "m.room.message", "sender": f"@alice:{self.name}",
            "content": {"msgtype": "m.text", "body": body},
            "origin_server_ts": int(time.time() * 1000), "depth": next(_depth),
            "prev_events": ["$prev"], "auth_events": ["$create", "$power", "$member"],
            **extra,
        }
        add_content_hash(pdu)
        redacted = redact(pdu, ROOM_VERSIONS[room_version])
        redacted.pop("signatures", None)
        pdu["signatures"] = sign_json(redacted, self.name, self.key)["signatures"]
        pdu["unsigned"] = {"age_ts": 1}
        return pdu

    def headers(self, method: str, uri: str, content: Any = None,
                destination: str = POLICY) -> dict[str, str]:
        return {"Authorization": authorization(method, uri, self.name, destination, self.key,
                                               content)}

    async def post(self, client: httpx.AsyncClient, uri: str, content: Any) -> httpx.Response:
        """A signed POST of ``content`` to ``uri``."""
        return await client.post(uri, json=content, headers=self.headers("POST", uri, content))

    async def put(self, client: httpx.AsyncClient, uri: str, content: Any) -> httpx.Response:
        return await client.put(uri, json=content, headers=self.headers("PUT", uri, content))


class ToLoopback(httpx.AsyncBaseTransport):
    """Sends every ``https://NAME/...`` request to the loopback server instead (what DNS
    and TLS would do for NAME), saying which name was asked in ``X-Name``."""

    def __init__(self, port: int | None) -> None:
        self._port = port
        self._inner = httpx.AsyncHTTPTransport()
        self.asked: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.asked.append(request.url.host)
        if self._port is None:
            raise httpx.ConnectError("connection refused", request=request)
        request.headers["X-Name"] = request.url.host
        request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=self._port)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class FakeSrv:
    """An injected SRV lookup: the records of each name (valid ``ttl_s``), and the names
    asked."""

    def __init__(self, records: dict[str, Sequence[SrvRecord]], ttl_s: float = 3600.0) -> None:
        self.records = records
        self.ttl_s = ttl_s
        self.asked: list[str] = []

    async def __call__(self, name: str) -> SrvAnswer:
        self.asked.append(name)
        if name not in self.records:
            return SrvAnswer()
        return SrvAnswer(tuple(self.records[name]), self.ttl_s)


@contextlib.asynccontextmanager
async def serve_loopback(app: Any) -> AsyncIterator[int]:
    """``app`` served by uvicorn on a free port of 127.0.0.1 (in the test's loop): the port."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started or task.done(), within=5, interval=0.01)
        assert server.started, "uvicorn did not start"
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
