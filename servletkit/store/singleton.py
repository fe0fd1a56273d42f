"""Singleton tasks: work that must run on exactly one container instance at a time.

A plugin's long-lived connection (the XMPP component, a policy-list follower)
must not run twice when several instances share one database. A plugin runs
it through :meth:`PluginStore.singleton <servletkit.store.PluginStore.singleton>`,
which is :func:`run_singleton`:

- the instance that takes the store's *hold* on the name runs ``work()``; the
  others try again every :data:`RETRY_S` (1 s), so when the holder dies (its
  database session ends, which releases its hold) another instance has taken
  over within about a second;
- the holder checks its hold every :data:`CHECK_S`; when the hold is lost (its
  database connection broke, or the server ended its session) ``work()`` is
  cancelled at once, and this instance goes back to trying;
- when ``work()`` returns or raises, the hold is released and taken again (here
  or elsewhere) after :data:`RETRY_S`: a singleton is a service kept running;
- cancelling the task running :func:`run_singleton` (at ``servlet_destroy``)
  cancels ``work()``, waits for it to end, then releases the hold.

With PostgreSQL the hold is a session advisory lock on a connection of its own
(:meth:`PostgresStore.hold <servletkit.store.postgres.PostgresStore.hold>`);
with the SQLite file, one process owns the store, so it is an in-process lock.
At most one instance runs ``work()`` at a time, with one exception a network
cut can cause: the server may release the hold of a holder it cannot reach
before that holder's next check notices, so the two may overlap for up to
:data:`CHECK_S`. Work that must never overlap fences its writes in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from servletkit.store.interface import Hold, Store


class LocalHold:
    """A hold within this process (the SQLite store's: one process owns the file)."""

    def __init__(self, held: set[str], name: str) -> None:
        self._held = held
        self._name = name
        held.add(name)

    async def lost(self) -> None:
        """Never lost while the process lives: waits until cancelled."""
        await asyncio.Event().wait()

    async def release(self) -> None:
        """Let the next taker in this process have it."""
        self._held.discard(self._name)


log = logging.getLogger("servletkit.store.singleton")

RETRY_S: Final = 1.0
CHECK_S: Final = 1.0


async def run_singleton(store: Store, name: str, work: Callable[[], Awaitable[None]],
                        *, retry_s: float = RETRY_S) -> None:
    """Run ``work()`` while this instance holds ``name`` among all instances on ``store``;
    never returns (cancel it to stop)."""
    while True:
        try:
            hold = await store.hold(name)
        except Exception as exc:  # the database is away: try again, do not end the task
            log.warning("singleton %s: cannot take the hold: %s; retrying", name, exc)
            hold = None
        if hold is not None:
            try:
                await _run_held(name, hold, work)
            finally:
                await hold.release()
        await asyncio.sleep(retry_s)


async def _run_held(name: str, hold: Hold, work: Callable[[], Awaitable[None]]) -> None:
    log.info("singleton %s: running here", name)
    running = asyncio.ensure_future(work())
    lost = asyncio.ensure_future(hold.lost())
    try:
        await asyncio.wait({running, lost}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (running, lost):
            task.cancel()
        for task in (running, lost):
            with contextlib.suppress(BaseException):
                await task
    if not running.cancelled() and running.done() and running.exception() is not None:
        log.error("singleton %s: failed; it starts again", name, exc_info=running.exception())
    elif lost.done() and not lost.cancelled():
        log.warning("singleton %s: lost the hold (database connection); stopped here", name)
    else:
        log.warning("singleton %s: returned; it starts again", name)
