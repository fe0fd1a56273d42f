"""A real Synapse with a registered appservice, and plain clients for its real users."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from servletkit.testing.synapse import SynapseServer, start_synapse
from servletkit.wires.appservice.homeserver import HomeserverClient

AS_TOKEN = "hsclient-test-as-token"
SENDER = "_test_bot"

# ``url: null``: Synapse sends this appservice no traffic but accepts its as_token.
REGISTRATION = {
    "id": "hsclient-test",
    "url": None,
    "as_token": AS_TOKEN,
    "hs_token": "hsclient-test-hs-token",
    "sender_localpart": SENDER,
    "rate_limited": True,
    "namespaces": {
        "users": [{"exclusive": True, "regex": "@_test_.*:localhost"}],
        "aliases": [{"exclusive": True, "regex": "#_test_.*:localhost"}],
        "rooms": [],
    },
}

# Messages are rate limited (the appservice is too, ``rate_limited: true``) so that
# a burst of sends meets real 429s; everything else stays relaxed.
RC_MESSAGE = {"per_second": 2, "burst_count": 3}  # slow enough to hit on a loaded machine


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseServer]:
    """A real Synapse (once per session) that knows the test appservice."""
    workdir: Path = tmp_path_factory.mktemp("hsclient-synapse")
    registration = workdir / "appservice.yaml"
    registration.write_text(json.dumps(REGISTRATION))  # JSON is valid YAML
    server = start_synapse(workdir, app_service_config_files=[registration],
                           extra_config={"rc_message": RC_MESSAGE})
    yield server
    server.stop()


@pytest.fixture
def appservice_section() -> dict[str, str]:
    """The ``[appservice]`` config table matching the registration."""
    return {key: REGISTRATION[key] for key in ("id", "as_token", "hs_token", "sender_localpart")}


@pytest.fixture(scope="session")
async def homeserver(synapse: SynapseServer) -> AsyncIterator[HomeserverClient]:
    """The client under test, acting as the appservice's bot."""
    client = HomeserverClient(synapse.url, AS_TOKEN, "localhost", SENDER)
    yield client
    await client.aclose()


class RealUser:
    """A normal Matrix user with a password account: the independent witness."""

    def __init__(self, http: httpx.AsyncClient, user_id: str) -> None:
        self.http = http
        self.user_id = user_id

    async def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        """One client-server request; fail the test on a non-2xx answer."""
        response = await self.http.request(method, path, json=body, params=params)
        assert response.is_success, f"{method} {path}: {response.status_code} {response.text}"
        return response.json() if path.startswith("/_matrix/client/v3") else response.content

    async def create_room(self, **body: Any) -> str:
        return (await self.call("POST", "/_matrix/client/v3/createRoom", body))["room_id"]

    async def join(self, room: str) -> str:
        return (await self.call("POST", f"/_matrix/client/v3/join/{quote(room, safe='')}",
                                {}))["room_id"]

    async def messages(self, room_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The room's events, oldest first."""
        page = await self.call("GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/messages",
                               dir="b", limit=limit)
        return list(reversed(page["chunk"]))


@pytest.fixture
async def new_user(synapse: SynapseServer) -> AsyncIterator[Any]:
    """A factory of freshly registered real users (closed after the test)."""
    clients: list[httpx.AsyncClient] = []

    def make(prefix: str = "alice") -> RealUser:
        account = synapse.register(f"{prefix}{uuid.uuid4().hex[:8]}")
        http = httpx.AsyncClient(base_url=synapse.url, headers={
            "Authorization": f"Bearer {account['access_token']}"})
        clients.append(http)
        return RealUser(http, account["user_id"])

    yield make
    for http in clients:
        await http.aclose()
