"""``run_eagerly``: finish a coroutine without a task when it never suspends."""

from __future__ import annotations

import asyncio

from servletkit.hooks.dispatcher import run_eagerly


async def test_finishes_without_suspending() -> None:
    """A coroutine that never awaits anything pending is done at once."""

    async def sync_answer() -> int:
        return 42

    assert run_eagerly(sync_answer()) == (True, 42)


async def test_suspended_rest_finishes_in_a_task() -> None:
    """A coroutine that suspends is handed back as an awaitable that completes it."""
    steps: list[str] = []

    async def slow_answer() -> str:
        steps.append("started")
        await asyncio.sleep(0.01)
        steps.append("resumed")
        return "done"

    done, rest = run_eagerly(slow_answer())
    assert (done, steps) == (False, ["started"])

    async def finish() -> str:
        return await rest

    assert await asyncio.ensure_future(finish()) == "done"
    assert steps == ["started", "resumed"]
