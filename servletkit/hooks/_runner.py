"""The run routine: calls a chain's slots in order and combines their answers by a rule.

Every mode of the dispatcher calls plugins through a chain's run routine, so a
plugin fails the same way in each. The routine is generated once per chain
*shape* (which slots are ``async def``; see :func:`_source`) and bound to each
chain when the chains are built (:func:`bind_run`): a run is straight-line code
with the slots' callables, contexts and budgets in closure variables, so the
common case, a plugin answering ``None`` in time, costs one clock read, one
addition and one comparison, with no per-slot unpacking or branch on the kind of
slot. Anything else (an answer, a failure, a slow call) goes to :func:`settle`.

The hang guard and :meth:`~servletkit.hooks.dispatcher.Dispatcher.in_flight`
read a run's frame: its code's file is :data:`RUN_FILE`, and its variables name
the dispatcher (``self``), the ``chain``, the slot being called (``slot``), when
its call started (``start``, :func:`time.perf_counter`) and its budget
(``budget_s``).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol

from servletkit.hooks._chain import LATENCY_BUCKETS, Chain, Slot
from servletkit.hooks._eventloop import Watch, Watchdog
from servletkit.hooks._hang_guard import PluginBlocked
from servletkit.hooks._rules import BLOCKED, RAISED, STOP, TIMED_OUT, Rule, raised, timed_out

RUN_FILE: Final = "<servletkit run routine>"
"""The file name of every generated run routine's code (how a run's frame is recognised)."""

FAST_S: Final = LATENCY_BUCKETS[0]
"""Calls within it are not counted per latency bucket."""


class Run(Protocol):
    """A chain's run routine: ``run(subject, new_rule, nothing)``.

    Calls the chain's slots in order with ``subject``. A plugin's answer of
    ``None`` in time is no answer. Otherwise the rule, made by ``new_rule`` the
    first time, gets the answer (:meth:`Rule.take`) or the plugin's failure
    (:meth:`Rule.failed`), and may end the run. Returns the rule's result, or
    ``nothing`` when no plugin answered or failed.
    """

    def __call__(self, subject: Any, new_rule: Callable[[Chain], Rule[Any]],
                 nothing: Any) -> Coroutine[Any, Any, Any]: ...


class Owner(Protocol):
    """What a run needs of its dispatcher: the watchdog of its async plugins."""

    _watchdog: Watchdog


def bind_run(owner: Owner, chain: Chain) -> Run:
    """The run routine of ``chain`` for the dispatcher ``owner``."""
    bind: Callable[[Owner, Chain], Run] = _factory(tuple(slot.is_async for slot in chain.slots))
    return bind(owner, chain)


def settle(chain: Chain, rule: Rule[Any] | None, new_rule: Callable[[Chain], Rule[Any]],
           slot: Slot, answer: Any, error: Any, elapsed: float, watch: Watch | None,
           subject: Any) -> tuple[Rule[Any] | None, Any]:
    """A run's slow path, after a call that answered, failed or was slow.

    Counts a slow call; gives the rule (made on first need) the answer or the
    failure. Returns the rule and the subject for the next slots, or ``STOP``
    when the run ends here.
    """
    if elapsed > FAST_S:
        slot.count_slow(elapsed)
    if answer is None and elapsed <= slot.budget_s:
        return rule, subject
    if rule is None:
        rule = new_rule(chain)
    if answer is TIMED_OUT or answer is BLOCKED or elapsed > slot.budget_s:
        Watchdog.absorb(watch)  # it may have fired after the plugin answered
        stop = rule.failed(slot, timed_out(slot, chain, elapsed, answer))
    elif answer is RAISED:
        stop = rule.failed(slot, raised(slot, chain, error))
    else:
        subject = rule.take(slot, answer, subject)
        stop = subject is STOP
    if stop:
        stopped_at(chain.slots, slot)
        return rule, STOP
    return rule, subject


def stopped_at(slots: tuple[Slot, ...], slot: Slot) -> None:
    """Count the run as not reaching the slots after ``slot``."""
    for later in slots[slots.index(slot) + 1:]:
        later.skipped += 1


_NAMES: Final = {
    "clock": time.perf_counter, "current_task": asyncio.current_task,
    "CancelledError": asyncio.CancelledError, "PluginBlocked": PluginBlocked,
    "absorb": Watchdog.absorb, "settle": settle, "stopped_at": stopped_at,
    "TIMED_OUT": TIMED_OUT, "BLOCKED": BLOCKED, "RAISED": RAISED, "STOP": STOP,
    "FAST_S": FAST_S,
}
"""The globals of the generated code."""


@functools.lru_cache(maxsize=256)
def _factory(shape: tuple[bool, ...]) -> Any:
    """The compiled ``bind(self, chain)`` of chains of ``shape`` (``True``: an async slot)."""
    namespace = dict(_NAMES)
    exec(compile(_source(shape), RUN_FILE, "exec"), namespace)
    return namespace["bind"]


_WATCH: Final = """\
try:
    watch = watches[current_task(watchdog.loop)]
except KeyError:  # the task's first run with async plugins, or a new event loop
    watch = None
if watch is None or watchdog.timer is None:
    watch = watchdog.watch()
outer_deadline = watch.deadline  # of an enclosing run in this task, if any
"""

_SLOT: Final = """\
slot, budget_s = slot_{k}, budget_{k}
try:
    {call}
except CancelledError:
    if not absorb(watch):
        stopped_at(chain.slots, slot)
        raise
    answer = TIMED_OUT
except PluginBlocked:
    answer = BLOCKED
except Exception as exc:
    error = exc
    answer = RAISED
end = clock()
elapsed = end - start
start = end
slot.total_s += elapsed
if answer is not None or elapsed > threshold_{k}:
    rule, subject = settle(chain, rule, new_rule, slot, answer, error, elapsed, watch, subject)
    if subject is STOP:
        return rule.result()
"""

_SYNC_CALL: Final = "answer = call_{k}(subject, context_{k})"
_ASYNC_CALL: Final = """watch.deadline = start + budget_s
    answer = await call_{k}(subject, context_{k})"""


def _source(shape: tuple[bool, ...]) -> str:
    """The source of ``bind(self, chain)`` for chains of ``shape``.

    ``bind`` takes each slot's ``call_0``,
    ``context_0``, ``budget_0`` and ``threshold_0`` (the time past which the slow
    path looks at the call) out of the chain; ``run`` finds the task's watch,
    counts the run, and for each slot sets ``slot`` and ``budget_s``, writes the
    deadline (async slots only), calls, and adds the elapsed time. ``self`` is a
    default argument of ``run``, so that the hang guard finds it in the frame.
    """
    bind = ["def bind(self, chain):", "    runs = chain.runs",
            "    watchdog = self._watchdog; watches = watchdog.watches" if any(shape)
            else "    watchdog = watches = None"]
    for k in range(len(shape)):
        bind.append(f"    slot_{k} = chain.slots[{k}]; call_{k} = slot_{k}.call; "
                    f"context_{k} = slot_{k}.context; budget_{k} = slot_{k}.budget_s; "
                    f"threshold_{k} = min(FAST_S, budget_{k})")
    body = ["runs[0] += 1", "start = clock()"]
    for k, is_async in enumerate(shape):
        call = (_ASYNC_CALL if is_async else _SYNC_CALL).format(k=k)
        body += _SLOT.format(k=k, call=call).splitlines()
    run = ["rule = error = watch = None"]
    if any(shape):
        run += _WATCH.splitlines()
        run += ["try:", *_indent(body), "finally:", "    watch.deadline = outer_deadline"]
    else:
        run += body
    run.append("return nothing if rule is None else rule.result()")
    return "\n".join([*bind, "    async def run(subject, new_rule, nothing, self=self):",
                      *_indent(_indent(run)), "    return run", ""])


def _indent(lines: list[str]) -> list[str]:
    return [f"    {line}" for line in lines]
