"""Event-loop helpers of the dispatcher: time budgets for awaited plugins, eager runs.

Two tricks keep a chain of plugins cheap, and they live here so that the
dispatcher can read as its rules:

* :class:`Watchdog` holds ``async def`` plugins to their time budget without an
  ``asyncio.timeout`` (a timer handle and a context manager) per call: the
  dispatcher writes the running plugin's deadline into its task's :class:`Watch`,
  and one shared timer cancels a task whose plugin is still suspended past it.
* :func:`run_eagerly` drives a coroutine without a task until it first suspends:
  the module wire answers a request whose plugins are all synchronous without
  creating a task or waiting for a loop turn.

Only public asyncio API is used: :func:`asyncio.current_task`, ``Task.cancel``
and ``Task.uncancel`` (Python 3.11).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Coroutine, Generator, Iterator
from types import FrameType
from typing import Any, Final, TypeVar

T = TypeVar("T")

MAX_AWAIT_DEPTH: Final = 256
"""How deep :meth:`Watchdog.awaiting_frames` follows what a coroutine awaits."""


class Resumed:
    """Awaitable that continues a coroutine someone already started with ``send(None)``.

    The value the coroutine yielded when it suspended (an asyncio future) must
    reach the task that awaits this, and the rest of the coroutine must run in
    that task. This does what ``yield from`` would, starting from the first
    yield instead of the beginning.
    """

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, yielded = self._coro, self._yielded
        while True:
            try:
                sent = yield yielded
            except BaseException as exc:  # forwarded into the coroutine, e.g. cancellation
                try:
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


def run_eagerly(coro: Coroutine[Any, Any, T]) -> tuple[bool, Any]:
    """Run ``coro`` until it first suspends, without a task.

    Returns ``(True, result)`` if it finished, else ``(False, rest)`` where
    ``rest`` is an awaitable that finishes it (await it from a task). Saves a
    task and a loop turn when, as usual, every plugin on the hook is sync; only
    for such hooks (:meth:`~servletkit.hooks.dispatcher.Dispatcher.all_sync`):
    the budgets of async plugins are enforced on the task that runs them.
    """
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    return False, Resumed(coro, yielded)


class Watch:
    """One task's entry in the :class:`Watchdog`: the deadline of the plugin it awaits.

    ``deadline`` is a :func:`time.perf_counter` time, ``math.inf`` while the task
    awaits no plugin; ``fired`` says the watchdog cancelled the task for it.
    """

    __slots__ = ("deadline", "fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.deadline = math.inf
        self.fired = False


class Watchdog:
    """Cancels tasks whose awaited plugin is still suspended after its deadline.

    Each task that runs chains with async plugins gets one :class:`Watch`, found
    once per chain call (:meth:`watch`), reused across its calls and dropped when
    the task ends. The caller writes the plugin's deadline into it before
    awaiting the plugin and sets it back afterwards. A timer, armed only while
    chains with async plugins run, checks the watches every :attr:`TICK_S`
    seconds and cancels the task of a watch past its deadline; the caller then
    undoes that cancellation (:meth:`absorb`) and treats the plugin as timed out.
    Precision is one tick. A watchdog serves one event loop at a time: a call
    from another loop moves it there.
    """

    TICK_S: Final = 0.005

    def __init__(self) -> None:
        self.watches: dict[asyncio.Task[Any], Watch] = {}
        """Each task's watch (a caller may look its task up here before :meth:`watch`)."""
        self.loop: asyncio.AbstractEventLoop | None = None
        """The event loop served."""
        self.timer: asyncio.TimerHandle | None = None
        """The armed timer, if any; :meth:`watch` arms it."""

    def watch(self) -> Watch:
        """The current task's watch; arms the timer.

        :raises RuntimeError: when not called from an asyncio task.
        """
        loop = asyncio.get_running_loop()
        if loop is not self.loop:  # first call, or a new event loop
            self.loop, self.timer = loop, None
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("the dispatcher must be awaited from an asyncio task")
        watch = self.watches.get(task)
        if watch is None:
            watch = self.watches[task] = Watch(task)
            task.add_done_callback(self.watches.pop)
        if self.timer is None:
            self.timer = loop.call_later(self.TICK_S, self._check)
        return watch

    def awaiting_frames(self) -> Iterator[FrameType]:
        """The frames of each task now awaiting a plugin, and of what it awaits, outermost
        first: every place a chain's run can be suspended (slow path, for reloads).

        A run of sync plugins never suspends; a run with async plugins suspends
        only while it awaits a plugin, when its task's watch holds a deadline.
        """
        for watch in list(self.watches.values()):
            if watch.deadline == math.inf:
                continue
            awaiting: Any = watch.task.get_coro()
            for _ in range(MAX_AWAIT_DEPTH):
                frame = getattr(awaiting, "cr_frame", None) or getattr(awaiting, "gi_frame", None)
                if frame is None:
                    break
                yield frame
                awaiting = (getattr(awaiting, "cr_await", None)
                            or getattr(awaiting, "gi_yieldfrom", None))

    @staticmethod
    def absorb(watch: Watch | None) -> bool:
        """If the watchdog cancelled ``watch``'s task, undo the cancellation and say so."""
        if watch is None or not watch.fired:
            return False
        watch.fired = False
        watch.task.uncancel()
        return True

    def _check(self) -> None:
        self.timer = None
        now = time.perf_counter()
        waiting = False
        for watch in self.watches.values():
            deadline = watch.deadline
            if deadline == math.inf or watch.fired:
                continue
            if now > deadline:
                watch.fired = True
                watch.task.cancel()
            else:
                waiting = True
        if waiting and self.loop is not None:
            self.timer = self.loop.call_later(self.TICK_S, self._check)
