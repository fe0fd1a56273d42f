"""Fixtures for the module wire: the container (in a thread) and two real Synapses.

The container runs the test plugin :mod:`tests.module_wire.wire_plugin` with
the module wire enabled, served by uvicorn in a thread (so a test can stop and
restart it). Two Synapse processes load ``ServletkitModule`` with the entry
``servletkit synapse-config`` prints: ``closed`` keeps the default failure
policy (refuse), ``open`` sets ``fail_open`` on every callback. Both start
once per session, concurrently.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from servletkit.container.app import build_app
from servletkit.container.config import Config, parse_config
from servletkit.container.plugins import PluginSource
from servletkit.container.runtime import Container
from servletkit.container.snippets import module_entry
from servletkit.synapse.settings import DEFAULT_POLICIES
from servletkit.testing import only_plugins
from servletkit.testing.synapse import SynapseServer, free_port, start_synapse
from tests.module_wire import wire_plugin

SECRET = "module-wire-test-secret-0123456789"
SLOW_BUDGET_MS = 300  # check_event_allowed's budget: the plugin stalls "slow" messages 1 s


def container_config(
    module_port: int, *, fail_open: bool | None = None, store: Path | None = None
) -> Config:
    """The container's config: test plugin on, every installed plugin off, module wire on;
    the audit log in ``store`` (give one where a test makes decisions)."""
    callbacks: dict[str, Any] = {"check_event_allowed": {"timeout_ms": SLOW_BUDGET_MS}}
    if fail_open is not None:
        for name in DEFAULT_POLICIES:
            callbacks.setdefault(name, {})["fail_open"] = fail_open
    return parse_config({
        "server": {"host": "127.0.0.1", "port": free_port(), "metrics": True},
        **({"store": {"path": str(store)}} if store is not None else {}),
        "module": {"enabled": True, "host": "127.0.0.1", "port": module_port,
                   "secret": SECRET, "callbacks": callbacks},
        "plugins": only_plugins({"wire_test": {"timeout_ms": 5000}}),
    })


class ContainerThread:
    """The container app served by uvicorn in a thread; :meth:`stop` and :meth:`start` again."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        container = Container(self.config, [PluginSource("wire_test", obj=wire_plugin)])
        container.load()
        server = uvicorn.Server(uvicorn.Config(
            build_app(container), host=self.config.server.host, port=self.config.server.port,
            lifespan="on", log_level="warning",
        ))
        self._thread = threading.Thread(target=server.run, name="container", daemon=True)
        self._server = server
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the container did not start")
            time.sleep(0.01)

    def round_trips(self) -> Counter[str]:
        """The module wire's requests so far, by hook (its ``/metrics``; 0 if none): one
        per round trip, a request's ``then`` included."""
        text = httpx.get(f"http://127.0.0.1:{self.config.server.port}/metrics", timeout=5).text
        return Counter({sample.labels["kind"]: int(sample.value)
                for family in text_string_to_metric_families(text)
                if family.name == "servletkit_wire_requests"
                for sample in family.samples
                if sample.name.endswith("_total") and sample.labels["wire"] == "module"})

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
            self._server = self._thread = None


@pytest.fixture(scope="session")
def module_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def container(
    module_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ContainerThread]:
    store = tmp_path_factory.mktemp("module_wire_store") / "servletkit.db"
    running = ContainerThread(container_config(module_port, store=store))
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def homeservers(
    tmp_path_factory: pytest.TempPathFactory, container: ContainerThread, module_port: int
) -> Iterator[dict[str, SynapseServer]]:
    """``closed`` (default policies) and ``open`` (fail_open everywhere), started together."""
    entries = {
        "closed": module_entry(container_config(module_port)),
        "open": module_entry(container_config(module_port, fail_open=True)),
    }
    root = tmp_path_factory.mktemp("module_wire")

    def start(name: str) -> SynapseServer:
        return start_synapse(Path(root, name), modules=[entries[name]])

    with ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(start, name) for name in entries}
    servers = {name: future.result() for name, future in futures.items()}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="session")
def synapse(homeservers: dict[str, SynapseServer]) -> SynapseServer:
    """The Synapse with the default (fail-closed) policies."""
    return homeservers["closed"]


class User:
    """A Matrix user on a Synapse, speaking the client-server API through httpx."""

    def __init__(self, server: SynapseServer, localpart: str | None = None) -> None:
        self.server = server
        self.localpart = localpart or f"u{uuid.uuid4().hex[:10]}"
        registered = server.register(self.localpart)
        self.user_id: str = registered["user_id"]
        self.http = httpx.Client(
            base_url=f"{server.url}/_matrix/client/v3",
            headers={"Authorization": f"Bearer {registered['access_token']}"},
            timeout=10,
        )

    def create_room(self, **body: Any) -> str:
        response = self.http.post("/createRoom", json=body)
        assert response.status_code == 200, response.text
        return response.json()["room_id"]

    def send(self, room_id: str, body: str) -> httpx.Response:
        return self.http.put(
            f"/rooms/{room_id}/send/m.room.message/{uuid.uuid4().hex}",
            json={"msgtype": "m.text", "body": body},
        )

    def set_name(self, name: str) -> None:
        """Set this user's display name (their profile)."""
        response = self.http.put(f"/profile/{self.user_id}/displayname",
                                 json={"displayname": name})
        assert response.status_code == 200, response.text

    def member_content(self, room_id: str, user_id: str) -> dict[str, Any]:
        """The content of ``user_id``'s membership event in the room's state."""
        response = self.http.get(f"/rooms/{room_id}/state/m.room.member/{user_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def messages(self, room_id: str) -> list[dict[str, Any]]:
        """The room's timeline as this user receives it, oldest first."""
        response = self.http.get(f"/rooms/{room_id}/messages", params={"dir": "b", "limit": 50})
        assert response.status_code == 200, response.text
        return list(reversed(response.json()["chunk"]))


UserFactory = Callable[..., User]


@pytest.fixture
def make_user(synapse: SynapseServer) -> Iterator[UserFactory]:
    """``make_user(server=synapse, localpart=None)``: a new user, closed after the test."""
    made: list[User] = []

    def make(server: SynapseServer = synapse, localpart: str | None = None) -> User:
        made.append(User(server, localpart))
        return made[-1]

    yield make
    for user in made:
        user.http.close()


@pytest.fixture
def alice(make_user: UserFactory) -> User:
    return make_user()


@pytest.fixture
def bob(make_user: UserFactory) -> User:
    return make_user()
