"""Two container instances on one PostgreSQL database, through the appservice wire: a
transaction handled by one and retried to the other is acknowledged, not handled again;
plugin data one instance wrote is what the other reads."""

from __future__ import annotations

import httpx

from servletkit import hookimpl
from servletkit.container.app import build_app
from servletkit.container.config import parse_config
from servletkit.container.plugins import PluginSource
from servletkit.container.runtime import Container
from servletkit.store.postgres import PostgresStore
from servletkit.testing import only_plugins
from tests.appservice.support import AUTH, HS_TOKEN, new_event


class Counter:
    """Counts the events it is handed, in its own list and in the shared store."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    async def on_stored_event(self, event, context):
        self.seen.append(event.event_id)
        await context.store.put("count", await context.store.get("count", 0) + 1)


async def test_a_retry_to_another_instance_is_not_handled_again(tmp_path, postgres_url):
    started = []
    try:
        for n in range(2):
            counter = Counter()
            config = parse_config({
                "appservice": {"as_token": "unit-as-token", "hs_token": HS_TOKEN},
                "plugins": only_plugins({"counter": {}}),
                "store": {"url": postgres_url},
            }, tmp_path / f"instance{n}" / "servletkit.toml")
            container = Container(config, [PluginSource("counter", obj=counter)])
            container.load()
            await container.start()
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(container)),
                                       base_url="http://container")
            started.append((container, client, counter))
        (first, a, one), (second, b, two) = started
        assert isinstance(first.store, PostgresStore) and isinstance(second.store, PostgresStore)
        event, later = new_event(), new_event()
        path = "/_matrix/app/v1/transactions/"
        assert (await a.put(path + "7", json={"events": [event]}, headers=AUTH)).status_code == 200
        # the homeserver did not get the answer and retries, through the load balancer, to
        # the other instance: acknowledged, not handled again
        assert (await b.put(path + "7", json={"events": [event]}, headers=AUTH)).status_code == 200
        assert (await b.put(path + "8", json={"events": [later]}, headers=AUTH)).status_code == 200
        assert (one.seen, two.seen) == ([event["event_id"]], [later["event_id"]])
        # the plugin's counter is shared: the second instance counted on from the first's
        assert await first.store.get("counter", "count") == "2"
    finally:
        for container, client, _ in reversed(started):
            await client.aclose()
            await container.stop()
