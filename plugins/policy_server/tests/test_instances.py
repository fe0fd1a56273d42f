"""Two container instances on one PostgreSQL store enforce the counting rules exactly."""

from __future__ import annotations

import asyncio
import contextlib

from servletkit_policy_server import PolicyServer

from servletkit.testing import make_event, running_container
from tests.store.conftest import postgres_server, postgres_url  # noqa: F401 (fixtures)


async def test_two_instances_share_flood_and_join_wave_counts_exactly(
        postgres_url: str) -> None:  # noqa: F811
    """Messages and joins sent to both instances at once: exactly those past each limit
    are refused, as if one instance counted them all."""
    table = {"flood_messages": 5, "flood_seconds": 60,
             "join_wave_joins": 4, "join_wave_seconds": 60}
    config = {"plugins": {"policy_server": table}, "store": {"url": postgres_url}}
    async with contextlib.AsyncExitStack() as stack:
        containers = [await stack.enter_async_context(
            running_container({"policy_server": PolicyServer()}, config)) for _ in range(2)]
        messages = [make_event(f"hello {i}", wire="appservice") for i in range(20)]
        joins = [make_event(type="m.room.member", sender=f"@u{i}:x", state_key=f"@u{i}:x",
                            content={"membership": "join"}) for i in range(12)]
        outcomes = await asyncio.gather(*(
            containers[i % 2].dispatcher.intercept("on_send_event", event)
            for i, event in enumerate(messages + joins)))
    refused = [outcome.vetoed for outcome in outcomes]
    assert refused[:20].count(True) == 20 - 5
    assert refused[20:].count(True) == 12 - 4
