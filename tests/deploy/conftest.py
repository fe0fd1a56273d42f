"""The multi-instance deployment of docs/deploy.md, for real: PostgreSQL, two
``servletkit run`` instances, nginx in front of them, and a Synapse whose appservice
registration points at nginx and whose module lists both instances."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from servletkit.container.config import load_config
from servletkit.container.snippets import dump_yaml, registration
from servletkit.dev.embedded_synapse import stop_process
from servletkit.store import PluginStore
from servletkit.testing import only_plugins, plugin_site, plugins_toml, python_path_env
from servletkit.testing.container import start_container
from servletkit.testing.synapse import SynapseServer, free_port, start_synapse
from tests.appservice.conftest import User
from tests.deploy.nginx import Nginx, nginx_binary
from tests.store.conftest import postgres_server, postgres_url  # noqa: F401 (fixtures)

PLUGIN = "mitest"
BOT = "mitestbot"
SECRET = "multi-instance-module-secret-0123"

# counts each message it observes (seen/<event_id>), joins when invited, and runs one
# singleton that writes its process id to "leader" ten times a second
PLUGIN_CODE = '''
import asyncio, os
from servletkit import hookimpl

task = None

@hookimpl
async def servlet_init(context):
    global task
    async def lead():
        while True:
            await context.store.put("leader", os.getpid())
            await asyncio.sleep(0.1)
    task = asyncio.create_task(context.store.singleton("leader", lead))

@hookimpl
async def servlet_destroy(context):
    task.cancel()

@hookimpl
async def on_stored_event(event, context):
    hs = context.homeserver
    if (event.type == "m.room.member" and event.state_key == hs.user_id
            and event.content.get("membership") == "invite"):
        await hs.join(event.room_id)
        return
    if event.type == "m.room.message":
        key = f"seen/{event.event_id}"
        await context.store.put(key, await context.store.get(key, 0) + 1)
        await asyncio.sleep(0.02)  # a kill lands mid-transaction
'''


class MultiInstance:
    """The two instances (``processes``), nginx, Synapse, and the shared database."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.store_url = url
        self.hs_port = free_port()
        self.ports = [free_port(), free_port()]
        self.module_ports = [free_port(), free_port()]
        self.nginx = Nginx(root / "nginx", [f"127.0.0.1:{port}" for port in self.ports])
        self.env = python_path_env(plugin_site(root, PLUGIN, PLUGIN_CODE))
        self.configs = [self._config(index) for index in range(2)]
        self.processes: list[subprocess.Popen[bytes]] = []
        self.synapse: SynapseServer | None = None
        self.bot_id = f"@{BOT}:localhost"

    def _config(self, index: int) -> Path:
        workdir = self.root / f"instance{index}"
        workdir.mkdir()
        path = workdir / "servletkit.toml"
        path.write_text("\n".join([
            f'[server]\nhost = "127.0.0.1"\nport = {self.ports[index]}',
            f'[homeserver]\nurl = "http://127.0.0.1:{self.hs_port}"\nserver_name = "localhost"',
            f'[store]\nurl = "{self.store_url}"\npool_size = 4',
            '[appservice]\nid = "multi"\nas_token = "multi-as"\nhs_token = "multi-hs"',
            f'sender_localpart = "{BOT}"\nurl = "{self.nginx.url}"',
            '[[appservice.namespaces.users]]\nregex = "@_multi_.*:localhost"\nexclusive = true',
            f'[module]\nenabled = true\nport = {self.module_ports[index]}\nsecret = "{SECRET}"',
            plugins_toml(only_plugins({PLUGIN: {"timeout_ms": 10000}})),
        ]))
        return path

    def start(self, nginx: str) -> None:
        self.nginx.start(nginx)
        for config, port in zip(self.configs, self.ports, strict=True):
            self.processes.append(start_container(
                config, f"http://127.0.0.1:{port}", workdir=config.parent, env=self.env))
        registration_file = self.root / "registration.yaml"
        registration_file.write_text(dump_yaml(registration(load_config(self.configs[0]))))
        module = {"module": "servletkit.synapse.ServletkitModule", "config": {
            "secret": SECRET,
            "containers": [f"127.0.0.1:{port}" for port in self.module_ports]}}
        self.synapse = start_synapse(self.root / "synapse", port=self.hs_port,
                                     app_service_config_files=[registration_file],
                                     modules=[module])

    def stop(self) -> None:
        for process in self.processes:
            stop_process(process, 10)
        self.nginx.stop()
        if self.synapse is not None:
            self.synapse.stop()

    async def plugin_data(self, prefix: str) -> dict[str, Any]:
        """What the plugin has committed under ``prefix``, read from PostgreSQL."""
        from servletkit.store.postgres import PostgresStore

        store = PostgresStore(self.store_url, pool_size=1)
        try:
            items = await PluginStore(store, PLUGIN).items(prefix)
            return {key.removeprefix(prefix): value for key, value in items}
        finally:
            await store.close()


@pytest.fixture
def deployment(tmp_path: Path, postgres_url: str) -> Iterator[MultiInstance]:  # noqa: F811
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install nginx, or run .ci/run)")
    running = MultiInstance(tmp_path, postgres_url)
    try:
        running.start(binary)
        yield running
    finally:
        running.stop()


@pytest.fixture
async def alice(deployment: MultiInstance) -> AsyncIterator[User]:
    """A freshly registered real user of the deployment's Synapse."""
    assert deployment.synapse is not None
    account = deployment.synapse.register("alice")
    async with httpx.AsyncClient(
        base_url=deployment.synapse.url, timeout=30,
        headers={"Authorization": f"Bearer {account['access_token']}"},
    ) as http:
        yield User(http, account["user_id"])
