"""One real Synapse, its module configured with two ``servletkit run`` instances
(``containers``); one instance is killed (SIGKILL) and the other answers every
callback within its budget: no 503, vetoes still applied."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from servletkit.dev.embedded_synapse import stop_process
from servletkit.testing import only_plugins, plugins_toml
from servletkit.testing.container import start_container
from servletkit.testing.synapse import SynapseServer, free_port, start_synapse
from tests.module_wire.conftest import SECRET, User

pytestmark = pytest.mark.integration

REASON = "failover test: not here"
BUDGET_MS = 2000


def _instance(workdir: Path) -> tuple[Path, int, int]:
    """Write one instance's servletkit.toml; return (config, http port, module port)."""
    workdir.mkdir()
    port, module_port = free_port(), free_port()
    config = workdir / "servletkit.toml"
    config.write_text("\n".join([
        f'[server]\nhost = "127.0.0.1"\nport = {port}',
        f'[store]\npath = "{workdir / "servletkit.db"}"',
        f'[module]\nenabled = true\nhost = "127.0.0.1"\nport = {module_port}\n'
        f'secret = "{SECRET}"',
        plugins_toml(only_plugins({"word_filter": {"words": ["forbidden"], "reason": REASON}})),
    ]))
    return config, port, module_port


@pytest.fixture(scope="module")
def two_instances(tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[SynapseServer, list[subprocess.Popen[bytes]]]]:
    root = tmp_path_factory.mktemp("failover")
    instances = [_instance(root / name) for name in ("a", "b")]
    processes = [start_container(config, f"http://127.0.0.1:{port}", workdir=config.parent)
                 for config, port, _ in instances]
    entry = {"module": "servletkit.synapse.ServletkitModule", "config": {
        "secret": SECRET,
        "containers": [f"127.0.0.1:{module_port}" for _, _, module_port in instances],
    }}
    synapse = start_synapse(root / "synapse", modules=[entry])
    yield synapse, processes
    synapse.stop()
    for process in processes:
        stop_process(process, 10)


def test_one_instance_killed(
        two_instances: tuple[SynapseServer, list[subprocess.Popen[bytes]]]) -> None:
    """Before and after one instance dies, every message is decided: allowed ones are
    stored once, forbidden ones refused with the plugin's reason, none answered 503."""
    synapse, processes = two_instances
    user = User(synapse)
    try:
        _check(user, processes)
    finally:
        user.http.close()


def _check(user: User, processes: list[subprocess.Popen[bytes]]) -> None:
    room = user.create_room()
    time.sleep(0.5)  # both connections open, so requests take turns
    sent: list[str] = []

    def burst(label: str) -> None:
        for index in range(10):
            body = f"{label} {index} {uuid.uuid4().hex[:6]}"
            start = time.monotonic()
            response = user.send(room, body)
            assert time.monotonic() - start < BUDGET_MS / 1000 + 1
            assert response.status_code == 200, (body, response.text)
            sent.append(body)
            refused = user.send(room, f"forbidden {label} {index}")
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"] == REASON

    burst("before")
    processes[0].kill()
    processes[0].wait(10)
    burst("after")
    bodies = [event["content"]["body"] for event in user.messages(room)
              if event["type"] == "m.room.message"]
    assert bodies == sent
