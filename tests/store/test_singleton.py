"""Singleton tasks on both backends: one runner per name at a time; another takes over
when the holder stops, and (PostgreSQL) when the holder's database session is lost."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from servletkit.store.interface import Store
from servletkit.store.singleton import run_singleton
from servletkit.testing.waiting import eventually

RETRY_S = 0.1


class Runner:
    """``run_singleton`` as a task on one store, recording whether its work is running."""

    def __init__(self, store: Store, name: str = "job") -> None:
        self.running = False
        self.starts = self.stops = 0
        self.task = asyncio.create_task(run_singleton(store, name, self._work, retry_s=RETRY_S))

    async def _work(self) -> None:
        self.running = True
        self.starts += 1
        try:
            await asyncio.Event().wait()
        finally:
            self.running = False
            self.stops += 1

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def runners(stores: list[Store]) -> AsyncIterator[list[Runner]]:
    started = [Runner(store) for store in stores]
    try:
        yield started
    finally:
        for runner in started:
            await runner.stop()


async def exactly_one(started: list[Runner]) -> Runner:
    """Wait until one runner runs, then check it stays the only one for a while."""
    await eventually(lambda: sum(r.running for r in started) == 1, within=10)
    for _ in range(5):
        await asyncio.sleep(RETRY_S)
        assert sum(r.running for r in started) == 1
    return next(r for r in started if r.running)


async def open_stores(make_store: Callable[..., Any], count: int) -> list[Store]:
    stores = [make_store() for _ in range(count)]
    for store in stores:
        await store.open()
    return stores


async def test_one_runner_and_takeover_on_stop(make_store: Callable[..., Any]) -> None:
    """Three runners (on separate stores of one database, or one SQLite store): one runs;
    stopping it hands the work to another, which runs alone."""
    first = (await open_stores(make_store, 1))[0]
    stores = [first, *(await open_stores(make_store, 2))] if "Postgres" in repr(first) \
        else [first] * 3
    try:
        async with runners(stores) as started:
            holder = await exactly_one(started)
            await holder.stop()
            assert not holder.running
            second = await exactly_one([r for r in started if r is not holder])
            assert second.starts == 1
    finally:
        for store in set(stores):
            await store.close()


async def test_lost_session_stops_the_holder(make_store: Callable[..., Any],
                                            request: Any) -> None:
    """PostgreSQL: the holder's session is ended by the server; the holder notices
    within its check interval and stops its work, and the other instance takes over."""
    first = (await open_stores(make_store, 1))[0]
    if "Postgres" not in repr(first):
        await first.close()
        return  # the SQLite store's hold is in-process: nothing to lose
    import psycopg

    second = (await open_stores(make_store, 1))[0]
    url = request.getfixturevalue("postgres_url")
    try:
        async with runners([first, second]) as started:
            holder = await exactly_one(started)
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()")
            await eventually(lambda: holder.stops == 1, within=5)
            await exactly_one(started)
    finally:
        await first.close()
        await second.close()
