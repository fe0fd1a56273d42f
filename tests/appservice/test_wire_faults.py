"""Faults around the appservice wire: the store locked by another process, the homeserver
down or silent while a plugin calls it, plugins that raise, hang or answer nonsense.

Each test bounds its waits; each checks what the homeserver sees (a status it retries, or
200) and that the plugin's durable count of every event is exactly one.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time

import httpx

from servletkit import hookimpl
from servletkit.store import PluginStore
from servletkit.testing.synapse import free_port
from tests.appservice.serving import served
from tests.appservice.support import AUTH, new_event
from tests.store.locking import locked


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


async def counts(container, events: list[dict]) -> list[int]:
    plugin = PluginStore(container.store, "counts")
    return [await plugin.get(f"seen/{event['event_id']}", 0) for event in events]


async def _health_while(client: httpx.AsyncClient, request: asyncio.Task[httpx.Response],
                        seconds: float) -> float:
    """Probe health every 50 ms for ``seconds`` while ``request`` waits; the longest the
    loop kept a probe (or the pause after it) waiting beyond its 50 ms."""
    slowest = 0.0
    probes = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        health = await client.get("/_servletkit/health")
        assert health.status_code == 200
        await asyncio.sleep(0.05)
        slowest = max(slowest, time.monotonic() - started - 0.05)
        probes += 1
        assert not request.done(), "the request did not wait for the lock"
    assert probes >= seconds / 0.5, probes
    return slowest


async def test_a_locked_store_is_a_5xx_then_the_retry_counts_once(make_wire, tmp_path):
    """While another process holds the SQLite write lock for longer than the store's busy
    timeout (5 s), a transaction is answered 500 M_UNKNOWN (the homeserver retries it) and
    nothing of it is kept, while health is answered at once throughout; the retry after the
    lock is released is delivered, each event counted exactly once."""
    container, _ = await make_wire({"counts": Counts()})
    events = [new_event() for _ in range(3)]
    body = {"events": events}
    async with served(container) as client:
        await client.put("/_matrix/app/v1/transactions/warm", json={"events": []}, headers=AUTH)
        with locked(tmp_path / "servletkit.db"):
            started = time.monotonic()
            request = asyncio.create_task(client.put("/_matrix/app/v1/transactions/t1",
                                                     json=body, headers=AUTH))
            slowest = await _health_while(client, request, 3.0)
            refused = await asyncio.wait_for(request, 15)
            took = time.monotonic() - started
        assert (refused.status_code, refused.json()["errcode"]) == (500, "M_UNKNOWN")
        assert 4.5 < took < 15, took  # the whole busy timeout (5 s), not a hang
        assert slowest < 1.0, slowest  # before: each probe waited out the busy timeout
        assert await counts(container, events) == [0, 0, 0]
        retried = await client.put("/_matrix/app/v1/transactions/t1", json=body, headers=AUTH)
        assert retried.status_code == 200
        again = await client.put("/_matrix/app/v1/transactions/t1", json=body, headers=AUTH)
        assert again.status_code == 200
    assert await counts(container, events) == [1, 1, 1]


async def test_a_transaction_waiting_for_the_lock_succeeds_once_it_is_released(make_wire,
                                                                               tmp_path):
    """A lock held for less than the busy timeout: the transaction waits without holding the
    event loop (health answered meanwhile) and is answered 200 once the lock goes, each
    event counted once."""
    container, _ = await make_wire({"counts": Counts()})
    events = [new_event() for _ in range(3)]
    async with served(container) as client:
        await client.put("/_matrix/app/v1/transactions/warm", json={"events": []}, headers=AUTH)
        with locked(tmp_path / "servletkit.db"):
            request = asyncio.create_task(client.put("/_matrix/app/v1/transactions/t1",
                                                     json={"events": events}, headers=AUTH))
            slowest = await _health_while(client, request, 1.5)
        answer = await asyncio.wait_for(request, 10)
        assert answer.status_code == 200, answer.text
        assert slowest < 1.0, slowest
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


SEND_BURST = """
import asyncio, json, sys
import httpx

job = json.load(open(sys.argv[1]))
resets = []

async def send_burst():
    limits = httpx.Limits(max_connections=len(job["burst"]))
    async with httpx.AsyncClient(base_url=job["url"], limits=limits, timeout=120) as homeserver:
        async def push(n, events):
            for _ in range(3):  # a reset connection is retried, as Synapse does
                try:
                    answer = await homeserver.put(f"/_matrix/app/v1/transactions/o{n}",
                                                  json={"events": events}, headers=job["auth"])
                except httpx.TransportError:
                    resets.append(n)
                    continue
                return answer.status_code
            return 0
        return list(await asyncio.gather(*(push(n, events)
                                           for n, events in enumerate(job["burst"]))))

print(json.dumps([asyncio.run(send_burst()), resets]))
"""


async def test_an_overload_of_transactions_is_answered_slowly_and_counted_once(make_wire,
                                                                              tmp_path):
    """200 transactions of 25 events sent at once (from another process, as a homeserver
    sends them) queue behind the transaction lock, a slow answer the
    homeserver waits for; health is answered meanwhile, every transaction gets 200, each
    event is counted exactly once, and a transaction after the burst is quick."""
    container, _ = await make_wire({"counts": Counts()})
    burst = [[new_event() for _ in range(25)] for _ in range(200)]
    async with served(container) as client:
        base_url = client.base_url
        burst_file = tmp_path / "burst.json"
        burst_file.write_text(json.dumps({"url": str(base_url), "auth": AUTH,
                                          "burst": burst}))
        # from another process, as a homeserver sends: a sender thread here would share
        # the container's GIL and was half of the stall measured
        sender = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SEND_BURST, str(burst_file), stdout=asyncio.subprocess.PIPE)
        sending = asyncio.ensure_future(sender.communicate())
        slowest, probes = 0.0, 0
        while not sending.done():
            started = time.monotonic()
            assert (await client.get("/_servletkit/health")).status_code == 200
            slowest, probes = max(slowest, time.monotonic() - started), probes + 1
            await asyncio.sleep(0.05)
        statuses, resets = json.loads((await sending)[0])
        assert statuses == [200] * len(burst)
        started = time.monotonic()
        after = [new_event()]
        answer = await client.put(f"/_matrix/app/v1/transactions/o{len(burst)}",
                                  json={"events": after}, headers=AUTH)
        assert answer.status_code == 200
        quick = time.monotonic() - started
    print(f"overload: {probes} health probes during the burst, slowest {slowest:.3f} s; "
          f"{len(resets)} connections reset and retried")
    # the slowest health answer: 0.14-1.0 s at load 12-14 (docs/reliability.md); a
    # container callback holding the loop for seconds would fail this
    assert probes > 1 and slowest < 5, (probes, slowest)
    assert quick < 1, quick
    every = [event for events in burst for event in events] + after
    assert await counts(container, every) == [1] * len(every)
