"""Interrupts a plugin that holds the event loop's thread past its time budget.

The :class:`~servletkit.hooks._eventloop.Watchdog` cancels an ``async def``
plugin that is *suspended* past its budget. A plugin that *blocks* (a sync
plugin calling ``time.sleep`` or a blocking HTTP client, or an ``async def`` one
doing so between awaits) keeps the event loop's thread, so no timer can run and
every wire waits. The :class:`HangGuard` watches from a thread of its own:

* every :attr:`HangGuard.TICK_S` it looks at the loop thread's stack
  (:func:`sys._current_frames`); when the innermost frame of the dispatcher's
  run routine is calling a plugin whose budget has passed, it signals the loop
  thread;
* the signal handler runs in that thread between two bytecodes (a blocking
  sleep, read or lock wait returns early for it), checks the stack again, and
  raises :class:`PluginBlocked` inside the plugin, which the dispatcher counts
  as timed out; the guard then tells the dispatcher (on the loop, once the
  plugin has let go) to run the plugin's sync hooks in worker threads.

Nothing is added to the dispatcher's hot path: the guard reads the run
routine's own locals (``start``, ``budget_s``, ``slot``). A signal handler can
only run in the main thread, so only a loop on the main thread (``servletkit
run`` and ``dev``) is interrupted; on any other thread a block is reported and
the plugin moved to worker threads, but the call in progress runs to its end.
Code that holds the GIL in C for long (a huge regular expression) is not
interrupted until it returns to Python.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any, Final

log = logging.getLogger("servletkit.dispatcher")

MAX_STACK_DEPTH: Final = 512
"""How far up the loop thread's stack the guard looks for the run routine."""

INTERRUPT_SIGNAL: Final = getattr(signal, "SIGRTMIN", signal.SIGUSR2) + (
    2 if hasattr(signal, "SIGRTMIN") else 0)
"""The signal the guard sends the loop thread (a real-time one where there are)."""


class PluginBlocked(BaseException):
    """Raised inside a plugin that held the event loop past its budget.

    A :class:`BaseException`, so that a plugin's ``except Exception`` does not
    swallow it; its ``finally`` blocks and context managers still run.
    """


class HangGuard:
    """Watches one event loop thread for plugins of one dispatcher that block it.

    ``run_file`` is the file name of the code of the dispatcher's run routines, whose
    variables name the dispatcher (``self``, which must be ``owner``), the slot being
    called (``slot``), when its call started (``start``, :func:`time.perf_counter`) and
    its budget (``budget_s``). ``own_files`` are the files of the dispatcher's own
    code: a frame from them just below the run routine means the run is doing its
    bookkeeping, not calling a plugin, and is never interrupted. ``blocked(slot)``
    is called back on the event loop for each plugin caught blocking it.

    One monitor thread serves every started guard of the process (several
    containers may share one, as in tests), ticking only while some guard runs.
    """

    TICK_S: Final = 0.01

    def __init__(self, owner: object, run_file: str, own_files: frozenset[str],
                 blocked: Callable[[Any], None]) -> None:
        self._owner = owner
        self._run_file = run_file
        self._own_files = own_files
        self._blocked = blocked
        self._thread_id = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._interrupts = False
        self._reported: set[int] = set()  # ids of run frames already reported

    @property
    def running(self) -> bool:
        """Whether the guard watches a thread."""
        return self in _GUARDS

    def start(self) -> None:
        """Watch the running event loop's thread (call it from the loop); idempotent."""
        if self.running:
            return
        self._loop = asyncio.get_running_loop()
        self._thread_id = threading.get_ident()
        self._interrupts = threading.current_thread() is threading.main_thread()
        if self._interrupts:
            _install_handler()
        with _MONITOR_LOCK:
            _GUARDS.add(self)
            _ensure_monitor()

    def stop(self) -> None:
        """Stop watching (the monitor thread ends within a tick once no guard runs)."""
        with _MONITOR_LOCK:
            _GUARDS.discard(self)

    def check(self, frames: dict[int, FrameType]) -> None:
        """On the monitor thread: act if a plugin holds the watched thread past its budget."""
        run = self._overrun(frames.get(self._thread_id))
        if run is None or id(run) in self._reported:
            return
        if self._interrupts:
            signal.pthread_kill(self._thread_id, INTERRUPT_SIGNAL)
            return
        # cannot interrupt: report it once, move the plugin on
        self._reported.add(id(run))
        slot = run.f_locals.get("slot")
        log.error("plugin %r is blocking the event loop past its budget; it cannot "
                  "be interrupted (the loop is not on the main thread)",
                  getattr(slot, "plugin", "?"))
        self._call_blocked(slot)

    def interrupt(self, frame: FrameType | None) -> None:
        """On the loop thread, with its current ``frame``: raise :class:`PluginBlocked` if
        a plugin is still holding the loop past its budget."""
        run = self._overrun(frame)
        if run is not None:
            self._call_blocked(run.f_locals.get("slot"))
            raise PluginBlocked

    def _call_blocked(self, slot: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._blocked, slot)

    def _overrun(self, frame: FrameType | None) -> FrameType | None:
        """The innermost run frame above ``frame`` if it is this guard's dispatcher's and
        is calling a plugin past its budget."""
        below: FrameType | None = None
        for _ in range(MAX_STACK_DEPTH):
            if frame is None:
                return None
            if frame.f_code.co_filename == self._run_file:
                break
            below, frame = frame, frame.f_back
        else:
            return None
        if below is None or below.f_code.co_filename in self._own_files:
            return None  # the run itself is executing: bookkeeping, not a plugin
        run_locals = frame.f_locals
        if run_locals.get("self") is not self._owner:
            return None
        start, budget_s = run_locals.get("start"), run_locals.get("budget_s")
        if not isinstance(start, float) or not isinstance(budget_s, float):
            return None
        return frame if time.perf_counter() - start > budget_s else None


_GUARDS: weakref.WeakSet[HangGuard] = weakref.WeakSet()
"""The started guards (a dispatcher dropped without stopping its guard drops out too)."""
_MONITOR_LOCK: Final = threading.Lock()
_monitor: threading.Thread | None = None


def _ensure_monitor() -> None:
    """Start the monitor thread unless it runs (with :data:`_MONITOR_LOCK` held)."""
    global _monitor
    if _monitor is None:
        _monitor = threading.Thread(target=_watch, name="servletkit-hang-guard", daemon=True)
        _monitor.start()


def _watch() -> None:
    """The monitor thread: every tick, each guard looks at its thread's stack."""
    global _monitor
    while True:
        time.sleep(HangGuard.TICK_S)
        with _MONITOR_LOCK:
            guards = list(_GUARDS)
            if not guards:
                _monitor = None
                return
        frames = sys._current_frames()
        for guard in guards:
            guard.check(frames)


def _install_handler() -> None:
    """Handle :data:`INTERRUPT_SIGNAL` from now on, for every guard.

    Installed once and left installed: a signal sent by a guard just before it
    stopped must find a handler (the default action ends the process).
    """
    if signal.getsignal(INTERRUPT_SIGNAL) is not _on_signal:
        signal.signal(INTERRUPT_SIGNAL, _on_signal)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    for guard in list(_GUARDS):
        guard.interrupt(frame)
