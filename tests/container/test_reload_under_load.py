"""Ten reloads under a continuous stream of appservice transactions and module-wire
requests (issue 13): nothing lost, nothing doubled, every decision from one version, the
broken versions never serve, the old versions are destroyed.

The container serves on 127.0.0.1 (uvicorn, in this process); one task PUTs
transactions, another asks over the module wire's socket, while the plugin is
rewritten and reloaded: behaviour changes, a new submodule, a new entry point, a
version that does not import and one whose ``servlet_init`` raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from servletkit.container.app import build_app
from servletkit.container.config import parse_config
from servletkit.container.runtime import Container
from servletkit.dev.embedded_synapse import free_port
from servletkit.testing import only_plugins
from servletkit.wires.module.protocol import HEADER, PROTOCOL_VERSION, decode, encode
from tests.container.reload_support import PluginOnDisk, importable_plugin

pytestmark = pytest.mark.integration

HS_TOKEN = "reload-load-hs-token"
SECRET = "reload-load-module-secret-0123456789"
MAX_REQUESTS = 5000  # per stream: the loops are bounded whatever happens
PROGRESS_TIMEOUT_S = 10.0

# odd versions veto, even ones modify; the answer names the version that gave it
DECIDE = '''
import asyncio

@hookimpl
async def on_send_event(event, context):
    await asyncio.sleep(0.001)  # async: calls are in flight while versions are swapped
    journal.handled.append((event.wire, event.event_id, VERSION))
    if int(VERSION.split(".")[1]) % 2:
        return Veto(f"veto by {VERSION}")
    return Modify(content={"body": f"modified by {VERSION}"})
'''

WITH_SUBMODULE = '''
import asyncio
from .marks import mark

@hookimpl
async def on_send_event(event, context):
    await asyncio.sleep(0.001)
    journal.handled.append((event.wire, event.event_id, VERSION))
    return Veto(mark(VERSION))
'''

AS_CLASS = '''
import asyncio
from servletkit import Veto, hookimpl
import {journal} as journal

VERSION = "0.6"

class Decider:
    @hookimpl
    async def on_send_event(self, event, context):
        await asyncio.sleep(0.001)
        journal.handled.append((event.wire, event.event_id, VERSION))
        return Veto(f"class veto by {{VERSION}}")

    @hookimpl
    def servlet_destroy(self, context):
        journal.events.append(("destroy", VERSION))
'''

OBSERVE = '''
@hookimpl
def on_stored_event(event, context):
    journal.stored.append(event.event_id)
'''

INIT_FAILS = '''
@hookimpl
def servlet_init(context):
    raise RuntimeError("this version refuses to start")
'''


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers (the test owns the process)."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PluginOnDisk]:
    on_disk = importable_plugin(tmp_path, monkeypatch, "loady")
    on_disk.journal.handled = []  # type: ignore[attr-defined]
    on_disk.write("0.1", DECIDE)
    yield on_disk
    on_disk.forget()


class Streams:
    """The two streams and what they saw."""

    def __init__(self, port: int, module_port: int) -> None:
        self.port = port
        self.module_port = module_port
        self.stop = asyncio.Event()
        self.transactions: dict[str, int] = {}  # txn id → HTTP status
        self.sent_events: list[str] = []
        self.answers: dict[str, dict[str, Any]] = {}  # module event id → answer

    async def appservice(self) -> None:
        url = f"http://127.0.0.1:{self.port}/_matrix/app/v1/transactions"
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {HS_TOKEN}"},
                                     timeout=30) as http:
            for n in range(MAX_REQUESTS):
                if self.stop.is_set():
                    return
                events = [event(f"$as{n}.{i}") for i in range(2)]
                self.sent_events += [e["event_id"] for e in events]
                response = await http.put(f"{url}/txn{n}", json={"events": events})
                self.transactions[f"txn{n}"] = response.status_code

    async def module(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.module_port)
        try:
            writer.write(encode({"op": "hello", "protocol": PROTOCOL_VERSION,
                                 "secret": SECRET}))
            assert (await receive(reader))["op"] == "hello"
            for n in range(1, MAX_REQUESTS):
                if self.stop.is_set():
                    return
                writer.write(encode({"id": n, "op": "event", "event": event(f"$mw{n}")}))
                await writer.drain()
                answer = await receive(reader)
                assert answer["id"] == n
                self.answers[f"$mw{n}"] = answer
        finally:
            writer.close()

    def progress(self) -> tuple[int, int]:
        return len(self.transactions), len(self.answers)


def event(event_id: str) -> dict[str, Any]:
    return {"event_id": event_id, "room_id": "!r:localhost", "type": "m.room.message",
            "sender": "@alice:localhost", "origin_server_ts": 1, "unsigned": {},
            "content": {"msgtype": "m.text", "body": "hello"}}


async def receive(reader: asyncio.StreamReader) -> dict[str, Any]:
    (length,) = HEADER.unpack(await asyncio.wait_for(reader.readexactly(HEADER.size), 10))
    return decode(await asyncio.wait_for(reader.readexactly(length), 10))


async def until_progress(streams: Streams, since: tuple[int, int], at_least: int = 3) -> None:
    deadline = time.monotonic() + PROGRESS_TIMEOUT_S
    while any(now < then + at_least for now, then in zip(streams.progress(), since,
                                                          strict=True)):
        assert time.monotonic() < deadline, f"the streams stalled at {streams.progress()}"
        await asyncio.sleep(0.005)


def version_in(answer: dict[str, Any]) -> str:
    """The version an answer names (every version's decision does)."""
    text = answer["veto"]["reason"] if "veto" in answer else answer["modify"]["body"]
    return text.rsplit(" ", 1)[-1]


async def test_ten_reloads_under_a_stream_lose_and_double_nothing(
    tmp_path: Path, plugin: PluginOnDisk
) -> None:
    port, module_port = free_port(), free_port()
    config = parse_config({
        "server": {"host": "127.0.0.1", "port": port},
        "appservice": {"as_token": "reload-load-as-token", "hs_token": HS_TOKEN},
        "module": {"enabled": True, "host": "127.0.0.1", "port": module_port,
                   "secret": SECRET},
        "store": {"path": str(tmp_path / "servletkit.db")},
        "plugins": only_plugins({plugin.name: {"timeout_ms": 5000}}),
    }, tmp_path / "servletkit.toml")
    container = Container(config)
    container.load()
    server = _Server(uvicorn.Config(build_app(container), host="127.0.0.1", port=port,
                                    lifespan="on", log_level="warning"))
    serving = asyncio.create_task(server.serve())
    streams = Streams(port, module_port)
    try:
        while not server.started:
            assert not serving.done(), "the container did not start"
            await asyncio.sleep(0.01)
        running = [asyncio.create_task(streams.module())]
        await asyncio.wait_for(container.ready.wait(), 10)
        running.append(asyncio.create_task(streams.appservice()))
        await until_progress(streams, (0, 0))

        j = plugin.journal.__name__
        steps: list[tuple[str, str, dict[str, str], str | None]] = [
            ("0.2", DECIDE, {}, None),
            ("0.3", WITH_SUBMODULE, {"marks.py": "def mark(v):\n    return f'sub {v}'\n"},
             None),
            ("0.4", "def broken(:\n", {}, None),  # does not import
            ("0.5", DECIDE + INIT_FAILS, {}, None),  # does not start
            ("0.6", "", {"impl.py": AS_CLASS.format(journal=j)}, "loady.impl:Decider"),
            ("0.7", DECIDE, {}, None),
            ("0.8", DECIDE, {}, None),
            ("0.9", "raise ImportError('half-saved file')\n", {}, None),
            ("0.10", DECIDE, {}, None),
            ("0.11", WITH_SUBMODULE, {"marks.py": "def mark(v):\n    return f'new {v}'\n"},
             None),
        ]
        served, broken = ["0.1"], []
        for version, body, files, entry_point in steps:
            since = streams.progress()
            plugin.write(version, body, files=files, entry_point=entry_point)
            result = await container.reload(plugin.name)
            (served if result.ok else broken).append(version)
            await until_progress(streams, since)
        assert broken == ["0.4", "0.5", "0.9"]

        # a second plugin deployed and undeployed under the same streams
        second = PluginOnDisk(plugin.site, "loady_two")
        second.journal.stored = []  # type: ignore[attr-defined]
        try:
            second.write("1.0", OBSERVE)
            since = streams.progress()
            [deployed] = await container.deploy(["loady_two"])
            assert deployed.ok, deployed.error
            await until_progress(streams, since)
            since = streams.progress()
            assert (await container.unload(second.name)).ok
            await until_progress(streams, since)
        finally:
            second.forget()
        streams.stop.set()
        await asyncio.wait_for(asyncio.gather(*running), 20)
        await asyncio.wait_for(container.drained(), 20)
    finally:
        streams.stop.set()
        server.should_exit = True
        await asyncio.wait_for(serving, 20)

    handled: list[tuple[str, str, str]] = plugin.journal.handled  # type: ignore[attr-defined]
    # every transaction acknowledged; every event handled exactly once
    assert streams.transactions and set(streams.transactions.values()) == {200}
    appservice = [event_id for wire, event_id, _ in handled if wire == "appservice"]
    assert sorted(appservice) == sorted(streams.sent_events)
    module = {event_id: version for wire, event_id, version in handled if wire == "module"}
    assert len(module) == len([1 for wire, _, _ in handled if wire == "module"])
    assert set(module) == set(streams.answers)
    # each decision from exactly one version, which served; the broken ones never did
    for event_id, answer in streams.answers.items():
        assert version_in(answer) == module[event_id], (event_id, answer)
    versions = {version for _, _, version in handled}
    assert versions <= set(served) and not versions & set(broken)
    assert len(versions) >= len(served) - 1  # traffic reached (nearly) every version
    # every replaced version destroyed once; the last one when the container stopped
    destroyed = [version for what, version in plugin.events if what == "destroy"]
    assert sorted(destroyed) == sorted(served)
    assert "0.4" not in [v for _, v in plugin.events] and ("init", "0.5") not in plugin.events
    # the second plugin: started once, observed some events once each, destroyed once
    assert second.events == [("init", "1.0"), ("destroy", "1.0")]
    stored = second.journal.stored  # type: ignore[attr-defined]
    assert stored and len(set(stored)) == len(stored) and set(stored) <= set(appservice)
    print(f"\n{len(streams.transactions)} transactions ({len(streams.sent_events)} events), "
          f"{len(streams.answers)} module requests, {len(steps)} reloads: "
          f"{len(served) - 1} served, {len(broken)} refused")


