"""Shared helpers of the policy wire's tests: a fake remote homeserver with real keys,
PDUs signed by it, and X-Matrix requests from it."""

from __future__ import annotations

import itertools
import time
from typing import Any

import httpx
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json
from signedjson.types import SigningKey

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

    def transport(self, *others: RemoteServer) -> httpx.MockTransport:
        """Serves the key endpoint of this server and of ``others``, by host name."""
        servers = {server.name: server for server in (self, *others)}

        def handle(request: httpx.Request) -> httpx.Response:
            server = servers.get(request.url.host)
            if server is not None and request.url.path == "/_matrix/key/v2/server":
                server.key_requests += 1
                return httpx.Response(200, json=server.keys_answer())
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
