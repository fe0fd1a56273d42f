"""Two container instances on one PostgreSQL store: the counting rules are enforced
exactly, and a dry-run toggle on one applies on the other."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from servletkit_policy_server import DRY_RUN_SECONDS, PolicyServer

from servletkit.container.runtime import Container
from servletkit.store import PluginStore
from servletkit.testing import make_event, running_container
from servletkit.testing.waiting import eventually
from tests.store.conftest import postgres_server, postgres_url  # noqa: F401 (fixtures)


@contextlib.asynccontextmanager
async def instances(url: str, table: dict[str, Any],
                    ) -> AsyncIterator[list[tuple[Container, PolicyServer]]]:
    """Two running containers with the plugin, on the store at ``url``."""
    config = {"plugins": {"policy_server": table}, "store": {"url": url}}
    async with contextlib.AsyncExitStack() as stack:
        running = []
        for _ in range(2):
            plugin = PolicyServer()
            running.append((await stack.enter_async_context(
                running_container({"policy_server": plugin}, config)), plugin))
        yield running


async def test_two_instances_share_flood_and_join_wave_counts_exactly(
        postgres_url: str) -> None:  # noqa: F811
    """Messages and joins sent to both instances at once: exactly those past each limit
    are refused, as if one instance counted them all."""
    table = {"flood_messages": 5, "flood_seconds": 60,
             "join_wave_joins": 4, "join_wave_seconds": 60}
    async with instances(postgres_url, table) as running:
        messages = [make_event(f"hello {i}", wire="appservice") for i in range(20)]
        joins = [make_event(type="m.room.member", sender=f"@u{i}:x", state_key=f"@u{i}:x",
                            content={"membership": "join"}) for i in range(12)]
        outcomes = await asyncio.gather(*(
            running[i % 2][0].dispatcher.intercept("on_send_event", event)
            for i, event in enumerate(messages + joins)))
    refused = [outcome.vetoed for outcome in outcomes]
    assert refused[:20].count(True) == 20 - 5
    assert refused[20:].count(True) == 12 - 4


async def test_a_dry_run_toggle_applies_on_every_instance(
        postgres_url: str) -> None:  # noqa: F811
    """Dry run turned on at one instance: the other stops refusing within
    DRY_RUN_SECONDS (it rereads the toggle no more often)."""
    async with instances(postgres_url, {"blocked_words": ["spam"]}) as running:
        (first, first_plugin), (second, _) = running
        assert (await second.dispatcher.intercept("on_send_event", make_event("spam"))).vetoed
        await first_plugin.set_dry_run(PluginStore(first.store, "policy_server"), True)
        assert not (await first.dispatcher.intercept("on_send_event",
                                                     make_event("spam"))).vetoed

        async def not_refused() -> bool:
            outcome = await second.dispatcher.intercept("on_send_event", make_event("spam"))
            return not outcome.vetoed

        await eventually(not_refused, within=DRY_RUN_SECONDS + 5)
