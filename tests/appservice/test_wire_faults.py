"""Faults around the appservice wire: the store locked by another process, the homeserver
down or silent while a plugin calls it, plugins that raise, hang or answer nonsense.

Each test bounds its waits; each checks what the homeserver sees (a status it retries, or
200) and that the plugin's durable count of every event is exactly one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from servletkit import hookimpl
from servletkit.store import PluginStore
from servletkit.testing.synapse import free_port
from tests.appservice.serving import served
from tests.appservice.support import AUTH, new_event

LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
db.execute("INSERT INTO plugin_data VALUES ('locker', 'k', '1')")
print("locked", flush=True)
sys.stdin.read()
db.execute("ROLLBACK")
"""


class Counts:
    """Counts each stored event durably: ``seen/<event_id>`` → deliveries."""

    @hookimpl
    async def on_stored_event(self, event, context):
        key = f"seen/{event.event_id}"
        await context.store.put(key, await context.store.get(key, 0) + 1)


class CallsHomeserver:
    """Sends a message through ``context.homeserver`` for every stored event."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    @hookimpl
    async def on_stored_event(self, event, context):
        try:
            await context.homeserver.send_message(event.room_id, "seen")
        except BaseException as exc:
            self.errors.append(type(exc).__name__)
            raise


@contextlib.contextmanager
def locked(database: Path) -> Iterator[None]:
    """Another process holds SQLite's write lock on ``database`` inside the block."""
    with subprocess.Popen([sys.executable, "-c", LOCKER, str(database)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as locker:
        assert locker.stdin is not None and locker.stdout is not None
        assert locker.stdout.readline() == "locked\n"
        try:
            yield
        finally:
            locker.stdin.close()
            locker.wait(10)


async def counts(container, events: list[dict]) -> list[int]:
    plugin = PluginStore(container.store, "counts")
    return [await plugin.get(f"seen/{event['event_id']}", 0) for event in events]


async def test_a_locked_store_is_a_5xx_then_the_retry_counts_once(make_wire, tmp_path):
    """While another process holds the SQLite write lock, a transaction is answered 500
    M_UNKNOWN (the homeserver retries it) and nothing of it is kept; the retry after the
    lock is released is delivered, each event counted exactly once."""
    container, _ = await make_wire({"counts": Counts()})
    events = [new_event() for _ in range(3)]
    body = {"events": events}
    async with served(container) as client:
        await client.put("/_matrix/app/v1/transactions/warm", json={"events": []}, headers=AUTH)
        with locked(tmp_path / "servletkit.db"):
            started = time.monotonic()
            refused = await client.put("/_matrix/app/v1/transactions/t1", json=body,
                                       headers=AUTH)
            took = time.monotonic() - started
        assert (refused.status_code, refused.json()["errcode"]) == (500, "M_UNKNOWN")
        assert took < 15, took  # SQLite's busy timeout (5 s), not a hang
        assert await counts(container, events) == [0, 0, 0]
        retried = await client.put("/_matrix/app/v1/transactions/t1", json=body, headers=AUTH)
        assert retried.status_code == 200
        again = await client.put("/_matrix/app/v1/transactions/t1", json=body, headers=AUTH)
        assert again.status_code == 200
    assert await counts(container, events) == [1, 1, 1]


def _silent_listener() -> socket.socket:
    """A homeserver that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    return listener


async def test_the_homeserver_down_or_silent_while_a_plugin_calls_it(make_wire, tmp_path):
    """A plugin calling a homeserver that refuses connections fails (raised) at once; one
    calling a homeserver that never answers is stopped at its budget (timed_out). Either
    way the transaction is answered 200 and the other plugin counts each event once."""
    calls = CallsHomeserver()
    refused_url = f"http://127.0.0.1:{free_port()}"
    container, client = await make_wire({"calls": calls, "counts": Counts()})
    container.homeserver.base_url = refused_url  # type: ignore[union-attr]
    down = [new_event() for _ in range(2)]
    answer = await client.put("/_matrix/app/v1/transactions/d1", json={"events": down},
                              headers=AUTH)
    assert answer.status_code == 200
    assert calls.errors == ["ConnectError", "ConnectError"]
    with _silent_listener() as listener:
        container.homeserver.base_url = (  # type: ignore[union-attr]
            f"http://127.0.0.1:{listener.getsockname()[1]}")
        silent = [new_event()]
        started = time.monotonic()
        answer = await asyncio.wait_for(client.put(
            "/_matrix/app/v1/transactions/s1", json={"events": silent}, headers=AUTH), 20)
        took = time.monotonic() - started
    assert answer.status_code == 200
    assert calls.errors[2:] == ["CancelledError"]
    assert took < 5, took  # the plugin's budget (1 s by default), not httpx's 30 s
    assert await counts(container, down + silent) == [1, 1, 1]


async def test_an_overload_of_transactions_is_answered_slowly_and_counted_once(make_wire):
    """200 transactions of 25 events sent at once (from another thread, as a homeserver
    would from another process) queue behind the transaction lock, a slow answer the
    homeserver waits for; health is answered meanwhile, every transaction gets 200, each
    event is counted exactly once, and a transaction after the burst is quick."""
    container, _ = await make_wire({"counts": Counts()})
    burst = [[new_event() for _ in range(25)] for _ in range(200)]
    async with served(container) as client:
        base_url = client.base_url
        resets: list[int] = []

        async def send_burst() -> list[int]:
            limits = httpx.Limits(max_connections=len(burst))
            async with httpx.AsyncClient(base_url=base_url, limits=limits,
                                         timeout=120) as homeserver:
                async def push(n: int, events: list[dict]) -> int:
                    for _ in range(3):  # a reset connection is retried, as Synapse does
                        try:
                            answer = await homeserver.put(f"/_matrix/app/v1/transactions/o{n}",
                                                          json={"events": events}, headers=AUTH)
                        except httpx.TransportError:
                            resets.append(n)
                            continue
                        return answer.status_code
                    return 0

                return list(await asyncio.gather(*(push(n, events)
                                                   for n, events in enumerate(burst))))

        sending = asyncio.create_task(asyncio.to_thread(asyncio.run, send_burst()))
        slowest, probes = 0.0, 0
        while not sending.done():
            started = time.monotonic()
            assert (await client.get("/_servletkit/health")).status_code == 200
            slowest, probes = max(slowest, time.monotonic() - started), probes + 1
            await asyncio.sleep(0.05)
        assert await sending == [200] * len(burst)
        started = time.monotonic()
        after = [new_event()]
        answer = await client.put(f"/_matrix/app/v1/transactions/o{len(burst)}",
                                  json={"events": after}, headers=AUTH)
        assert answer.status_code == 200
        quick = time.monotonic() - started
    print(f"overload: {probes} health probes during the burst, slowest {slowest:.3f} s; "
          f"{len(resets)} connections reset and retried")
    # no hang; the slowest health answer (about 4 s on the 2-core machine) is a known
    # stall under a burst, recorded in docs/reliability.md
    assert probes > 1 and slowest < 30, (probes, slowest)
    assert quick < 1, quick
    every = [event for events in burst for event in events] + after
    assert await counts(container, every) == [1] * len(every)
