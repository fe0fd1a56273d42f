"""Two container instances on one PostgreSQL database, through the appservice wire: a
transaction handled by one and retried to the other is acknowledged, not handled again;
the same transaction sent to both at once is handled once; plugin data one instance
wrote is what the other reads."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import httpx

from servletkit import hookimpl
from servletkit.container.app import build_app
from servletkit.container.config import parse_config
from servletkit.container.plugins import PluginSource
from servletkit.container.runtime import Container
from servletkit.store.postgres import PostgresStore
from servletkit.testing import only_plugins
from servletkit.testing.waiting import eventually
from tests.appservice.support import AUTH, HS_TOKEN, new_event


class Counter:
    """Counts the events it is handed, in its own list and in the shared store."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.seen: list[str] = []
        self.gate = gate

    @hookimpl
    async def on_stored_event(self, event, context):
        self.seen.append(event.event_id)
        if self.gate is not None:
            await self.gate.wait()
        await context.store.put("count", await context.store.get("count", 0) + 1)


@asynccontextmanager
async def instances(tmp_path, url, counters):
    """Started containers on the store ``url``, one per counter, and their clients."""
    started = []
    try:
        for n, counter in enumerate(counters):
            config = parse_config({
                "appservice": {"as_token": "unit-as-token", "hs_token": HS_TOKEN},
                "plugins": only_plugins({"counter": {}}),
                "store": {"url": url},
            }, tmp_path / f"instance{n}" / "servletkit.toml")
            container = Container(config, [PluginSource("counter", obj=counter)])
            container.load()
            await container.start()
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(container)),
                                       base_url="http://container")
            started.append((container, client))
        yield started
    finally:
        for container, client in reversed(started):
            await client.aclose()
            await container.stop()


def put(client, txn_id, events):
    return client.put(f"/_matrix/app/v1/transactions/{txn_id}", json={"events": events},
                      headers=AUTH)


async def test_a_retry_to_another_instance_is_not_handled_again(tmp_path, postgres_url):
    one, two = Counter(), Counter()
    async with instances(tmp_path, postgres_url, [one, two]) as started:
        (first, a), (second, b) = started
        assert isinstance(first.store, PostgresStore) and isinstance(second.store, PostgresStore)
        event, later = new_event(), new_event()
        assert (await put(a, "7", [event])).status_code == 200
        # the homeserver did not get the answer and retries, through the load balancer, to
        # the other instance: acknowledged, not handled again
        assert (await put(b, "7", [event])).status_code == 200
        assert (await put(b, "8", [later])).status_code == 200
        assert (one.seen, two.seen) == ([event["event_id"]], [later["event_id"]])
        # the plugin's counter is shared: the second instance counted on from the first's
        assert await first.store.get("counter", "count") == "2"


async def test_the_same_transaction_at_both_instances_at_once_is_handled_once(
        tmp_path, postgres_url):
    """While one instance handles a transaction, the other, sent the same one, waits for
    it (an advisory lock), then acknowledges it without handling it."""
    gate = asyncio.Event()
    one, two = Counter(gate), Counter(gate)
    async with instances(tmp_path, postgres_url, [one, two]) as [(_, a), (_, b)]:
        event = new_event()
        at_a = asyncio.create_task(put(a, "1", [event]))
        await eventually(lambda: one.seen)
        at_b = asyncio.create_task(put(b, "1", [event]))
        await asyncio.sleep(0.3)
        assert not at_b.done()  # waits for the first instance's attempt
        gate.set()
        assert [(await at_a).status_code, (await at_b).status_code] == [200, 200]
        assert (one.seen, two.seen) == ([event["event_id"]], [])


async def test_the_lock_is_released_when_its_holder_dies(postgres_url):
    """An instance that dies holding the lock (its database session ends) does not block
    the others: the server releases a session's advisory locks."""
    import psycopg

    first, second = PostgresStore(postgres_url), PostgresStore(postgres_url)
    held = asyncio.Event()

    async def hold():
        async with first.exclusive("x"):
            held.set()
            await asyncio.Event().wait()

    holder = asyncio.create_task(hold())
    await held.wait()
    lock = second.exclusive("x")
    waiting = asyncio.create_task(lock.__aenter__())
    await asyncio.sleep(0.2)
    assert not waiting.done()
    # the holder's session ends, as when its instance is killed
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
            "AND granted")
    await asyncio.wait_for(waiting, 10)
    await lock.__aexit__(None, None, None)
    holder.cancel()
    await asyncio.gather(holder, return_exceptions=True)
    await first.close()
    await second.close()
