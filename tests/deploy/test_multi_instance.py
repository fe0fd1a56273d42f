"""Two servletkit instances on PostgreSQL behind nginx serve a real Synapse through the
SIGKILL of one of them: every message is observed exactly once, every send is decided
(the module fails over), and the singleton task moves to the survivor."""

from __future__ import annotations

import asyncio

import pytest

from servletkit.testing.waiting import eventually
from tests.appservice.conftest import User
from tests.deploy.conftest import MultiInstance

pytestmark = pytest.mark.integration


async def test_an_instance_killed_mid_stream(deployment: MultiInstance, alice: User) -> None:
    room_id = await alice.room_with_bot(deployment.bot_id)

    async def leader() -> int | None:
        return (await deployment.plugin_data("leader")).get("")

    first_leader = await eventually(leader)
    victim = next(p for p in deployment.processes if p.pid == first_leader)
    survivor = next(p for p in deployment.processes if p is not victim)
    sent: list[str] = []

    async def send_stream() -> None:
        for i in range(40):  # every send passes the module wire: none may be refused
            sent.append(await alice.send(room_id, f"message {i}"))

    async def seen() -> set[str]:
        return set(sent) & (await deployment.plugin_data("seen/")).keys()

    sender = asyncio.create_task(send_stream())

    async def some_seen() -> bool:
        return len(await seen()) >= 5

    await eventually(some_seen, interval=0.01)
    victim.kill()
    await asyncio.to_thread(victim.wait, 10)
    seen_at_kill = await seen()
    await sender
    assert len(seen_at_kill) < len(sent), "the kill came too late to be mid-stream"
    sent += [await alice.send(room_id, f"after {i}") for i in range(5)]

    async def all_seen() -> bool:
        return await seen() == set(sent)

    await eventually(all_seen, within=60)
    await asyncio.sleep(0.5)  # nothing is delivered a second time later either
    counts = await deployment.plugin_data("seen/")
    assert {event_id: counts[event_id] for event_id in sent} == dict.fromkeys(sent, 1)

    async def moved() -> bool:
        return await leader() == survivor.pid

    await eventually(moved, within=10)
