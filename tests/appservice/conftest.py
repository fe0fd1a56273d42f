"""Fixtures for the appservice wire: in-process containers for unit tests, and (for the
integration tests) a real Synapse that pushes to a ``servletkit run`` subprocess."""

from __future__ import annotations

import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from servletkit.container.app import build_app
from servletkit.container.config import load_config
from servletkit.container.plugins import PluginSource
from servletkit.container.runtime import Container
from servletkit.container.snippets import dump_yaml, module_entry, registration
from servletkit.dev.embedded_synapse import stop_process
from servletkit.store import PluginStore, SqliteStore
from servletkit.synapse.settings import DEFAULT_POLICIES
from servletkit.testing import only_plugins, plugins_toml, python_path_env
from servletkit.testing.container import start_container
from servletkit.testing.synapse import SynapseServer, free_port, start_synapse
from servletkit.testing.waiting import eventually
from tests.appservice.support import HS_TOKEN, container_config

Wire = tuple[Container, httpx.AsyncClient]


@pytest.fixture
async def make_wire(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await make_wire({"name": plugin_obj}, **appservice_keys)`` →
    (started container, client of its app). Each call is a fresh container on the
    same store file, so calling it twice is a container restart."""
    started: list[tuple[Container, httpx.AsyncClient]] = []

    async def make(plugins: Mapping[str, Any] = {}, **appservice: Any) -> Wire:
        config = container_config(tmp_path, plugins, **appservice)
        sources = [PluginSource(name, obj=obj) for name, obj in plugins.items()]
        container = Container(config, sources)
        container.load()
        await container.start()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(container)),
                                   base_url="http://container")
        started.append((container, client))
        return container, client

    yield make
    for container, client in reversed(started):
        await client.aclose()
        await container.stop()


# -------------------------------------------------------------------------
# Integration: a real Synapse pushing to a `servletkit run` subprocess
# -------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
PLUGIN = "astest"
AS_ID = "servletkit-astest"
AS_TOKEN = "astest-as-token"
BOT = "astestbot"
MODULE_SECRET = "astest-module-secret-0123456789"
FAIL_CLOSED = ("user_may_create_room", "user_may_join_room")


class Deployment:
    """The container (a subprocess on a fixed port) and the Synapse it is registered with."""

    def __init__(self, workdir: Path, config_path: Path, port: int, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.config_path = config_path
        self.port = port
        self.env = env
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.synapse: SynapseServer | None = None
        self.bot_id = f"@{BOT}:localhost"

    def start_container(self, timeout: float = 30.0) -> None:
        """Start ``servletkit run`` and wait until its health endpoint answers."""
        self.process = start_container(self.config_path, self.url, workdir=self.workdir,
                                       env=self.env, timeout=timeout)

    def kill_container(self) -> None:
        """SIGKILL the container: no shutdown, no flush, like a crash."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop_container(self) -> None:
        """SIGTERM the container (SIGKILL after 10 s), if it was started."""
        if self.process is not None:
            stop_process(self.process, 10)

    async def plugin_data(self, prefix: str) -> dict[str, Any]:
        """What the test plugin has durably stored under ``prefix`` (read from the SQLite file)."""
        store = SqliteStore(self.workdir / "servletkit.db")
        try:
            plugin = PluginStore(store, PLUGIN)
            return {key.removeprefix(prefix): value for key, value in await plugin.items(prefix)}
        finally:
            await store.close()

    async def seen(self, sent: list[str]) -> set[str]:
        """The event ids of ``sent`` the test plugin has durably observed."""
        return set(sent) & (await self.plugin_data("seen/")).keys()

    def has_seen(self, sent: list[str]) -> Callable[[], Awaitable[bool]]:
        """A check for ``eventually``: the plugin has observed every event id in ``sent``
        (read when checked, so events appended later count)."""
        async def check() -> bool:
            return await self.seen(sent) == set(sent)
        return check


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The container with the test plugin, then a real Synapse that pushes to it (once)."""
    workdir = tmp_path_factory.mktemp("appservice")
    site = workdir / "site"
    dist_info = site / "servletkit_astest-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: servletkit-astest\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(
        f"[servletkit.plugins]\n{PLUGIN} = tests.appservice.astest_plugin\n")
    hs_port, port, module_port = free_port(), free_port(), free_port()
    config_path = workdir / "servletkit.toml"
    config_path.write_text("\n".join([
        f'[server]\nhost = "127.0.0.1"\nport = {port}',
        f'[homeserver]\nurl = "http://127.0.0.1:{hs_port}"\nserver_name = "localhost"',
        f'[appservice]\nid = "{AS_ID}"\nas_token = "{AS_TOKEN}"\nhs_token = "{HS_TOKEN}"',
        f'sender_localpart = "{BOT}"\nenforce_vetoes = "redact"\nreceive_ephemeral = true',
        '[[appservice.namespaces.users]]\nregex = "@_astest_.*:localhost"\nexclusive = true',
        '[[appservice.namespaces.aliases]]\nregex = "#_astest_.*:localhost"\nexclusive = true',
        # the module wire too, failing closed for room creation and joins: a plugin's own
        # calls from servlet_init must get through (the others fail open, so tests that
        # send while the container is down still can)
        f'[module]\nenabled = true\nport = {module_port}\nsecret = "{MODULE_SECRET}"',
        *(f"[module.callbacks.{name}]\nfail_open = {str(name not in FAIL_CLOSED).lower()}"
          for name in DEFAULT_POLICIES),
        plugins_toml(only_plugins({PLUGIN: {"timeout_ms": 10000}})),
    ]))
    deployment = Deployment(workdir, config_path, port, python_path_env(site, REPO))
    deployment.start_container()
    try:
        registration_file = workdir / "registration.yaml"
        registration_file.write_text(dump_yaml(registration(load_config(config_path))))
        deployment.synapse = start_synapse(
            workdir / "synapse", port=hs_port, app_service_config_files=[registration_file],
            modules=[module_entry(load_config(config_path))])
        yield deployment
    finally:
        deployment.stop_container()
        if deployment.synapse is not None:
            deployment.synapse.stop()


class User:
    """A real Matrix user with a password account, talking to Synapse over HTTP."""

    def __init__(self, http: httpx.AsyncClient, user_id: str) -> None:
        self.http = http
        self.user_id = user_id

    async def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        """One client-server request; fail the test on a non-2xx answer."""
        response = await self.http.request(method, f"/_matrix/client/v3{path}", json=body,
                                           params=params)
        assert response.is_success, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    async def send(self, room_id: str, body: str) -> str:
        path = f"/rooms/{quote(room_id)}/send/m.room.message/{uuid.uuid4().hex}"
        return (await self.call("PUT", path, {"msgtype": "m.text", "body": body}))["event_id"]

    async def members(self, room_id: str) -> set[str]:
        return set((await self.call("GET", f"/rooms/{quote(room_id)}/joined_members"))["joined"])

    async def room_with_bot(self, bot_id: str) -> str:
        """A public room where the appservice bot is invited with power to redact; it joins."""
        room_id = (await self.call("POST", "/createRoom", {
            "preset": "public_chat", "invite": [bot_id],
            "power_level_content_override": {"users": {bot_id: 100}},
        }))["room_id"]
        await eventually(lambda: self._has_member(room_id, bot_id))
        return room_id

    async def _has_member(self, room_id: str, user_id: str) -> bool:
        return user_id in await self.members(room_id)


@pytest.fixture
async def alice(deployment: Deployment) -> AsyncIterator[User]:
    """A freshly registered real user."""
    assert deployment.synapse is not None
    account = deployment.synapse.register(f"alice{uuid.uuid4().hex[:8]}")
    async with httpx.AsyncClient(
        base_url=deployment.synapse.url, timeout=30,
        headers={"Authorization": f"Bearer {account['access_token']}"},
    ) as http:
        yield User(http, account["user_id"])
