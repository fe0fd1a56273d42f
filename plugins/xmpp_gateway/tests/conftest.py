"""Fixtures: a real Prosody and a real Synapse (once per session) with the gateway
deployed between them in a ``servletkit run`` subprocess, and users on both sides."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from servletkit_xmpp_gateway.local import COMPONENT, MUC, gateway_table, namespaces
from servletkit_xmpp_gateway.prosody import ProsodyServer, start_prosody
from servletkit_xmpp_gateway.testing import MatrixUser, NioUser, XmppUser

from servletkit.container.config import load_config
from servletkit.container.snippets import dump_yaml, registration
from servletkit.dev.embedded_synapse import stop_process
from servletkit.store.factory import store_from_config
from servletkit.store.plugin import PluginStore
from servletkit.testing import only_plugins, plugins_toml
from servletkit.testing.container import start_container
from servletkit.testing.synapse import SynapseServer, free_port, start_synapse

XMPP_USERS = {"human": "humanpass", "bob": "bobpass", "carol": "carolpass",
              "dave": "dave-secret-pass",  # dave, erin: linked to Matrix users (test_linking.py)
              "erin": "erin-pass-1"}
LINK_SECRET_KEY = "test-link-secret-key-0123456789abcdef"
MATRIX_PASSWORD = "matrix-pw-1"
AS_TOKEN = "xmpp-as-token"
U = TypeVar("U", MatrixUser, NioUser)
CONFIGURED_ROOM = f"configured@{MUC}"  # bridged by the gateway's config, not on demand


class Gateway:
    """Prosody, Synapse and the container running the gateway between them."""

    def __init__(self, workdir: Path, prosody: ProsodyServer) -> None:
        self.workdir = workdir
        self.prosody = prosody
        self.port = free_port()
        self.hs_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "servletkit.toml"
        self.process: subprocess.Popen[bytes] | None = None
        self.synapse: SynapseServer | None = None
        self.rooms = [CONFIGURED_ROOM]  # the gateway's ``rooms``

    def write_config(self) -> None:
        """The container's config: appservice namespaces and the gateway's table."""
        table = gateway_table(self.prosody) | {
            "reconnect_max": 1.0, "timeout_ms": 10000, "rooms": self.rooms,
            "media_url": f"{self.url}/_servletkit/plugins/xmpp_gateway",
            "fetch_private_media": True,  # the tests' file server is on loopback
            "link_secret_key": LINK_SECRET_KEY, "client_host": "127.0.0.1",
            "client_port": self.prosody.c2s_port, "client_plaintext": True}
        owned = namespaces("localhost")
        self.config_path.write_text("\n".join([
            f'[server]\nhost = "127.0.0.1"\nport = {self.port}',
            f'[homeserver]\nurl = "http://127.0.0.1:{self.hs_port}"\nserver_name = "localhost"',
            f'[appservice]\nid = "xmpp"\nas_token = "{AS_TOKEN}"\nhs_token = "xmpp-hs-token"',
            'sender_localpart = "xmppbot"\nreceive_ephemeral = true',
            *(f"[[appservice.namespaces.{kind}]]\nregex = {json.dumps(n.regex)}\nexclusive = true"
              for kind in ("users", "aliases") for n in getattr(owned, kind)),
            plugins_toml(only_plugins({"xmpp_gateway": table})),
        ]))

    def start_container(self, timeout: float = 30.0) -> None:
        """``servletkit run`` in a subprocess; waits for its health endpoint."""
        self.process = start_container(self.config_path, self.url, workdir=self.workdir,
                                       timeout=timeout)

    def restart(self, *rooms: str) -> None:
        """Stop the container and start it again, bridging ``rooms`` from the config too."""
        assert self.process is not None
        stop_process(self.process, 10)
        self.rooms += [room for room in rooms if room not in self.rooms]
        self.write_config()
        self.start_container()

    async def plugin_data(self, key: str) -> Any:
        """What the gateway has stored under ``key`` (its store, read beside it)."""
        store = store_from_config(load_config(self.config_path))
        await store.open()
        try:
            return await PluginStore(store, "xmpp_gateway").get(key)
        finally:
            await store.close()

    def log(self) -> str:
        """What the container has logged so far."""
        return (self.workdir / "container.log").read_text(errors="replace")


@pytest.fixture(scope="session")
def prosody(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProsodyServer]:
    """A Prosody on loopback with the gateway's component, a MUC service and test accounts."""
    server = start_prosody(tmp_path_factory.mktemp("prosody"), component_jid=COMPONENT,
                           muc_domain=MUC, users=XMPP_USERS)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory, prosody: ProsodyServer) -> Iterator[Gateway]:
    """The container with the gateway, registered with a real Synapse (started once)."""
    gw = Gateway(tmp_path_factory.mktemp("gateway"), prosody)
    gw.write_config()
    gw.start_container()
    try:
        registration_file = gw.workdir / "registration.yaml"
        registration_file.write_text(dump_yaml(registration(load_config(gw.config_path))))
        gw.synapse = start_synapse(gw.workdir / "synapse", port=gw.hs_port,
                                   app_service_config_files=[registration_file])
        yield gw
    finally:
        if gw.process is not None:
            stop_process(gw.process, 10)
        if gw.synapse is not None:
            gw.synapse.stop()


async def registered_users(
    gateway: Gateway, log_in: Callable[[str, str, dict[str, Any]], Awaitable[U]],
    close: Callable[[U], Awaitable[None]],
) -> AsyncIterator[Callable[[str], Awaitable[U]]]:
    """The body of the Matrix user factories: ``make(name)`` registers a fresh account
    (localpart from ``name``, :data:`MATRIX_PASSWORD`), gets its client from
    ``log_in(homeserver_url, localpart, account)`` and sets the display name ``name``;
    every client is closed with ``close`` at the end."""
    users: list[U] = []

    async def make(name: str) -> U:
        assert gateway.synapse is not None
        localpart = f"{name.lower()}{uuid.uuid4().hex[:6]}"
        account = gateway.synapse.register(localpart, MATRIX_PASSWORD)
        user = await log_in(gateway.synapse.url, localpart, account)
        users.append(user)
        await user.set_displayname(name)
        return user

    yield make
    for user in users:
        await close(user)


@pytest.fixture
async def matrix_user(gateway: Gateway) -> AsyncIterator[Callable[[str], Awaitable[MatrixUser]]]:
    """Factory: a freshly registered Matrix user with display name ``name``."""

    async def log_in(url: str, localpart: str, account: dict[str, Any]) -> MatrixUser:
        return MatrixUser(httpx.AsyncClient(base_url=url, timeout=30, headers={
            "Authorization": f"Bearer {account['access_token']}"}), account["user_id"])

    async def close(user: MatrixUser) -> None:
        await user.http.aclose()

    async for make in registered_users(gateway, log_in, close):
        yield make


@pytest.fixture
async def gateway_bot(gateway: Gateway) -> AsyncIterator[MatrixUser]:
    """The gateway's appservice bot on the client-server API (it created the bridged
    rooms, so it can give Matrix users power in them)."""
    assert gateway.synapse is not None
    async with httpx.AsyncClient(base_url=gateway.synapse.url, timeout=30, headers={
            "Authorization": f"Bearer {AS_TOKEN}"}) as http:
        yield MatrixUser(http, "@xmppbot:localhost")


@pytest.fixture
async def nio_user(gateway: Gateway) -> AsyncIterator[Callable[[str], Awaitable[NioUser]]]:
    """Factory: a freshly registered Matrix user with display name ``name``, logged in
    with a matrix-nio client that syncs in the background."""

    async def log_in(url: str, localpart: str, account: dict[str, Any]) -> NioUser:
        return await NioUser.login(url, localpart, MATRIX_PASSWORD)

    async for make in registered_users(gateway, log_in, NioUser.close):
        yield make


@pytest.fixture
async def xmpp_user(prosody: ProsodyServer) -> AsyncIterator[Callable[[str], Awaitable[XmppUser]]]:
    """Factory: a logged-in XMPP user (one of :data:`XMPP_USERS`)."""
    users: list[XmppUser] = []

    async def make(localpart: str) -> XmppUser:
        user = XmppUser(f"{localpart}@{prosody.domain}/test", XMPP_USERS[localpart])
        users.append(user)
        await user.login(prosody.c2s_port)
        return user

    yield make
    for user in users:
        await user.logout()
