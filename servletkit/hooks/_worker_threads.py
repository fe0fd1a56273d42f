"""Worker threads that run a plugin's sync hooks off the event loop.

A plugin runs its sync hooks here when its ``[plugins.NAME]`` table says
``threaded = true``, or once the :class:`~servletkit.hooks._hang_guard.HangGuard`
caught it blocking the loop. A call costs a thread hand-off each way (tens of
microseconds instead of well under one), and in return a plugin that blocks
holds up only its own calls: the dispatcher awaits the call like an ``async
def`` plugin's, so its budget is enforced by cancelling the wait.

The threads are daemon threads: one stuck in a plugin forever cannot keep the
process from exiting. A plugin has at most :data:`THREADS_PER_PLUGIN` of them;
calls beyond that queue, and a call whose wait was cancelled before a thread
took it is never run.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, Final

THREADS_PER_PLUGIN: Final = 4

_Job = tuple["asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class WorkerThreads:
    """Up to :data:`THREADS_PER_PLUGIN` daemon threads for one plugin, started on demand."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads not running a job
        self._queued = 0  # jobs no thread has taken yet
        self._lock = threading.Lock()

    def wrap(self, call: Callable[[Any, Any], Any]) -> Callable[[Any, Any], asyncio.Future[Any]]:
        """``call`` run in these threads: the wrapper returns a future to await on the loop."""
        def in_thread(subject: Any, context: Any) -> asyncio.Future[Any]:
            return self.submit(call, subject, context)
        return in_thread

    def submit(self, function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run ``function(*args)`` in a worker thread; call from the event loop."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._idle <= self._queued and len(self._threads) < THREADS_PER_PLUGIN:
                thread = threading.Thread(target=self._work, daemon=True,
                                          name=f"servletkit-{self._name}-{len(self._threads)}")
                self._threads.append(thread)
                self._idle += 1
                thread.start()
            self._queued += 1
        self._jobs.put((future, function, args))
        return future

    def close(self) -> None:
        """Let the idle threads end; a thread stuck in a plugin ends when the plugin returns."""
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, function, args = job
            with self._lock:
                self._queued -= 1
                self._idle -= 1
            try:
                if not future.cancelled():  # its wait timed out while it queued
                    _run_for(future, function, args)
            finally:
                with self._lock:
                    self._idle += 1


def _run_for(future: asyncio.Future[Any], function: Callable[..., Any],
             args: tuple[Any, ...]) -> None:
    """Run ``function(*args)`` here and settle ``future`` with the result on its loop."""
    try:
        result, error = function(*args), None
    except BaseException as exc:  # delivered to the awaiting task, like any plugin error
        result, error = None, exc
    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
        future.get_loop().call_soon_threadsafe(_settle, future, result, error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled: the plugin's budget ran out first
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
