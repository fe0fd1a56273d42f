"""``GET /metrics``: each plugin's calls, time, decisions and failures, per hook and wire."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import attrs
import httpx
from prometheus_client.parser import text_string_to_metric_families

from servletkit import Veto, hookimpl
from servletkit.container.app import build_app
from servletkit.container.config import parse_config
from servletkit.container.plugins import PluginSource
from servletkit.container.runtime import Container
from servletkit.testing import only_plugins, plugins_toml
from servletkit.testing.container import start_container
from servletkit.testing.synapse import free_port
from servletkit.wires.module.listener import module_wire
from servletkit.wires.module.protocol import PROTOCOL_VERSION
from tests.appservice.support import AUTH, HS_TOKEN, new_event
from tests.appservice.support import container_config as appservice_config
from tests.module_wire.conftest import SECRET
from tests.module_wire.conftest import container_config as module_config
from tests.module_wire.test_listener import EVENT, Peer


class Vetoes:
    @hookimpl
    def on_send_event(self, event):
        return Veto("no") if event.content.get("body") == "bad" else None


class Raises:
    @hookimpl
    def on_send_event(self, event):
        raise RuntimeError("boom")


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, by name and labels."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def sample(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


async def started(config, **plugins: object) -> Container:
    plugins = plugins or {"vetoes": Vetoes(), "raises": Raises()}
    container = Container(config, [PluginSource(name, obj=obj) for name, obj in plugins.items()])
    container.load()
    await container.start()
    return container


async def test_appservice_decisions_failures_and_latency(tmp_path: Path) -> None:
    """Three events through two plugins (the second not asked after the first's veto):
    calls, time and failures from the dispatcher's figures; the veto and the failures by
    kind, the chain's latency and the requests from the wire."""
    config = appservice_config(tmp_path, {"vetoes": None, "raises": None})
    config = attrs.evolve(config, server=attrs.evolve(config.server, metrics=True))
    container = await started(config)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(container)),
                                     base_url="http://container") as client:
            body = {"events": [new_event(body="bad"), new_event(), new_event()]}
            for _ in range(2):  # the second is a retry
                answer = await client.put("/_matrix/app/v1/transactions/m1", json=body,
                                          headers=AUTH)
                assert answer.status_code == 200
            scraped = await client.get("/metrics")
    finally:
        await container.stop()
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    found = samples(scraped.text)
    hook = {"hook": "on_send_event"}
    assert sample(found, "servletkit_plugin_calls_total", plugin="vetoes", **hook) == 3
    assert sample(found, "servletkit_plugin_call_seconds_count", plugin="vetoes", **hook) == 3
    assert sample(found, "servletkit_plugin_call_seconds_sum", plugin="vetoes", **hook) > 0
    assert sample(found, "servletkit_plugin_failures_total", plugin="raises", **hook) == 2
    wire = {"wire": "appservice", **hook}
    assert sample(found, "servletkit_decisions_total", plugin="vetoes", decision="veto",
                  **wire) == 1
    assert sample(found, "servletkit_plugin_failures_by_kind_total", plugin="raises",
                  kind="raised", **wire) == 2
    assert sample(found, "servletkit_hook_seconds_count", **wire) == 3
    assert sample(found, "servletkit_hook_seconds_bucket", le="+Inf", **wire) == 3
    requests = {kind: sample(found, "servletkit_wire_requests_total", wire="appservice",
                             kind=kind) for kind in ("transaction", "retry")}
    assert requests == {"transaction": 1, "retry": 1}


async def test_module_wire_decisions_and_connections(tmp_path: Path) -> None:
    """A module-wire veto is counted under its wire, and its open connections are shown."""
    config = module_config(free_port(), store=tmp_path / "s.db")
    config = attrs.evolve(config, server=attrs.evolve(config.server, metrics=True))
    container = await started(config, wire_test=Vetoes())
    wire = module_wire(container)
    assert wire is not None
    try:
        async with wire.lifespan():
            reader, writer = await asyncio.open_connection("127.0.0.1", wire.port)
            peer = Peer(reader, writer)
            await peer.send({"op": "hello", "protocol": PROTOCOL_VERSION, "secret": SECRET})
            await peer.receive()
            bad = {**EVENT, "content": {"msgtype": "m.text", "body": "bad"}}
            await peer.send({"id": 1, "op": "event", "event": bad})
            assert "veto" in await peer.receive()
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=build_app(container, [wire])),
                base_url="http://container",
            ) as client:
                found = samples((await client.get("/metrics")).text)
            writer.close()
    finally:
        await container.stop()
    assert sample(found, "servletkit_decisions_total", wire="module", plugin="wire_test",
                  hook="on_send_event", decision="veto") == 1
    assert sample(found, "servletkit_wire_connections", wire="module") == 1


async def test_off_by_default(tmp_path: Path) -> None:
    """Without [server] metrics = true there is no /metrics."""
    container = await started(appservice_config(tmp_path, {}))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(container)),
                                     base_url="http://container") as client:
            assert (await client.get("/metrics")).status_code == 404
    finally:
        await container.stop()


class Holds:
    """Holds every event until released, so transactions queue behind the first."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.holding = asyncio.Event()

    @hookimpl
    async def on_send_event(self, event):
        self.holding.set()
        await self.release.wait()


async def test_appservice_queue_depth_and_transaction_lag(tmp_path: Path) -> None:
    """Transactions waiting behind a held one are the wire's queue depth; once committed,
    each gives one lag sample, from its oldest event's origin_server_ts."""
    config = parse_config({
        "server": {"metrics": True},
        "appservice": {"as_token": "as-token", "hs_token": HS_TOKEN},
        "plugins": only_plugins({"holds": {"timeout_ms": 10_000}}),
    }, tmp_path / "servletkit.toml")
    holds = Holds()
    container = await started(config, holds=holds)
    wire = {"wire": "appservice"}
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(container)),
                                     base_url="http://container") as client:
            minute_ago = int(time.time() * 1000) - 60_000
            puts = [asyncio.create_task(client.put(
                f"/_matrix/app/v1/transactions/q{n}", headers=AUTH,
                json={"events": [new_event(origin_server_ts=minute_ago + n)]}))
                for n in range(3)]
            await holds.holding.wait()
            await asyncio.sleep(0.05)  # the other two reach the lock
            queued = samples((await client.get("/metrics")).text)
            holds.release.set()
            assert [(await put).status_code for put in puts] == [200, 200, 200]
            done = samples((await client.get("/metrics")).text)
    finally:
        await container.stop()
    assert sample(queued, "servletkit_wire_queue_depth", **wire) == 3
    assert sample(done, "servletkit_wire_queue_depth", **wire) == 0
    assert sample(done, "servletkit_transaction_lag_seconds_count", **wire) == 3
    assert sample(done, "servletkit_transaction_lag_seconds_bucket", le="30.0", **wire) == 0
    assert sample(done, "servletkit_transaction_lag_seconds_bucket", le="300.0", **wire) == 3


class Slow:
    @hookimpl
    def on_send_event(self, event):
        if event.content.get("body") == "slow":
            time.sleep(0.03)


async def test_each_plugin_has_a_latency_histogram(tmp_path: Path) -> None:
    """Per plugin and hook, calls are counted in buckets: the one 30 ms call is beyond
    the 25 ms bound; the quick calls are within every bound."""
    config = appservice_config(tmp_path, {"slow": None})
    config = attrs.evolve(config, server=attrs.evolve(config.server, metrics=True))
    container = await started(config, slow=Slow())
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(container)),
                                     base_url="http://container") as client:
            body = {"events": [new_event(), new_event(body="slow"), new_event(), new_event()]}
            answer = await client.put("/_matrix/app/v1/transactions/h1", json=body,
                                      headers=AUTH)
            assert answer.status_code == 200
            scraped = await client.get("/metrics")
    finally:
        await container.stop()
    found = samples(scraped.text)
    labels = {"plugin": "slow", "hook": "on_send_event"}
    bucket = "servletkit_plugin_call_seconds_bucket"
    assert sample(found, bucket, le="0.0005", **labels) <= 3
    assert sample(found, bucket, le="0.025", **labels) == 3
    assert sample(found, bucket, le="10", **labels) == 4
    assert sample(found, bucket, le="+Inf", **labels) == 4
    assert sample(found, "servletkit_plugin_call_seconds_count", **labels) == 4
    assert sample(found, "servletkit_plugin_call_seconds_sum", **labels) >= 0.03


def test_the_server_listener_counts_its_open_connections(tmp_path: Path) -> None:
    """Through ``servletkit run``: two idle keep-alive connections and the scraping one are
    three open connections of the ``server`` wire; closed, they are no longer counted."""
    port = free_port()
    config = tmp_path / "servletkit.toml"
    config.write_text(f'[server]\nhost = "127.0.0.1"\nport = {port}\nmetrics = true\n'
                      + plugins_toml(only_plugins({})))
    url = f"http://127.0.0.1:{port}"
    process = start_container(config, url, workdir=tmp_path)

    def open_connections() -> float | None:
        with httpx.Client() as client:
            found = samples(client.get(f"{url}/metrics").text)
        return sample(found, "servletkit_wire_connections", wire="server")

    try:
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        time.sleep(0.2)
        assert open_connections() == 3
        for connection in idle:
            connection.close()
        deadline = time.monotonic() + 5
        while open_connections() != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert open_connections() == 1
    finally:
        process.terminate()
        process.wait(timeout=15)
