"""The dispatcher: runs a hook over the enabled plugins and combines their answers.

pluggy finds and validates the implementations; the dispatcher calls them,
because pluggy neither awaits coroutines nor gives each plugin its own context,
time budget and failure policy. The dispatcher is pure: no HTTP, no storage.

Every mode (:meth:`~Dispatcher.intercept`, :meth:`~Dispatcher.observe`,
:meth:`~Dispatcher.observe_each`, :meth:`~Dispatcher.first_answer`) calls the
plugins through one routine, each chain's run (:mod:`servletkit.hooks._runner`),
so a plugin fails the same way in each: it raised (``raised``), or it took longer
than its budget (``timed_out``: an ``async def`` plugin suspended past it is
cancelled, a plugin still holding the event loop past it is interrupted by the
:class:`~servletkit.hooks._hang_guard.HangGuard` and its sync hooks run in
worker threads from then on; an answer after the budget is ignored). Each mode
only brings its rule for combining answers (:mod:`servletkit.hooks._rules`).

Hot-path notes (see ``benchmarks/dispatch.py``): a :class:`Chain` is built once
per plugin change, with its run routine compiled for its shape; a plugin that
answers ``None`` in time costs one clock read, one addition and one comparison,
and no rule object is made unless some plugin answers something else; outcomes
that carry no new data are built once; an ``async def`` implementation is awaited
directly, its budget enforced by a :class:`~servletkit.hooks._eventloop.Watchdog`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any, Final, TypeVar

import attrs
import pluggy

from servletkit.hooks import _eventloop, _rules, _runner, _worker_threads
from servletkit.hooks._chain import (
    LATENCY_BUCKETS,
    Chain,
    FailureKind,
    OnError,
    Outcome,
    PluginFailure,
    PluginPolicy,
    Slot,
    SlotTimings,
    build_chains,
    iter_plugin_impls,
)
from servletkit.hooks._eventloop import Watchdog, run_eagerly
from servletkit.hooks._hang_guard import HangGuard
from servletkit.hooks._rules import (
    FAILURE_RECORD_ATTRIBUTE,
    FirstAnswer,
    Interception,
    InterceptionWithoutModify,
    Observation,
    accept_any,
)
from servletkit.hooks._runner import RUN_FILE, Run, bind_run
from servletkit.hooks._worker_threads import WorkerThreads
from servletkit.hooks.specs import HOOKS
from servletkit.hooks.table import HookTable

__all__ = [
    "FAILURE_RECORD_ATTRIBUTE",
    "LATENCY_BUCKETS",
    "Chain",
    "Dispatcher",
    "FailureKind",
    "OnError",
    "Outcome",
    "PluginFailure",
    "PluginPolicy",
    "Slot",
    "SlotTimings",
    "await_me_maybe",
    "iter_plugin_impls",
    "run_eagerly",
]

log = logging.getLogger("servletkit.dispatcher")

T = TypeVar("T")

_NO_FAILURES: Final[tuple[PluginFailure, ...]] = ()


async def await_me_maybe(value: T | Awaitable[T]) -> T:
    """Return ``value``, awaiting it first if it is awaitable (off the hot path)."""
    if inspect.isawaitable(value):
        return await value
    return value



class Dispatcher:
    """Runs interception chains, observation fan-outs and queries over a set of plugins.

    Build it from a pluggy :class:`~pluggy.PluginManager` that has the plugins
    registered, then call :meth:`rebuild` with the per-plugin policies and
    contexts, and again after registering or unregistering plugins; in-flight
    calls finish on the chains they started with.

    In every mode a plugin that raises, or takes longer than its policy's
    ``timeout_ms``, has failed: the failure is logged and counted in
    :meth:`timings`, and the plugin's answer, if any, is ignored. An ``async def``
    plugin suspended past its budget is cancelled (within 5 ms); once
    :meth:`start_guard` ran, a plugin holding the event loop past its budget is
    interrupted (within 10 ms) and its sync hooks run in worker threads from then
    on. Only :meth:`intercept` has a decision to make, so only there does
    ``on_error = "deny"`` turn a failure into a veto; the other modes go on with
    the next plugin.

    ``rebuilt(chains)``, if given, is called after each :meth:`rebuild` with the
    new chains, also when the dispatcher rebuilt them itself (a plugin caught
    blocking the loop moves to worker threads).
    """

    def __init__(self, pm: pluggy.PluginManager, hooks: HookTable = HOOKS,
                 rebuilt: Callable[[list[Chain]], None] | None = None) -> None:
        self._pm = pm
        self._hooks = hooks
        self._rebuilt = rebuilt
        self._chains: dict[str, Chain] = {}
        self._runs: dict[str, tuple[Chain, Run]] = {}  # each chain with its run routine
        self._watchdog = Watchdog()
        self._guard = HangGuard(self, RUN_FILE, _OWN_FILES, self._move_to_threads)
        self._built_from: tuple[Mapping[str, tuple[PluginPolicy, Any]],
                                Mapping[str, str] | None] = ({}, None)
        self._blocking: set[str] = set()  # plugins (as registered) caught blocking the loop
        self._threads: dict[str, WorkerThreads] = {}

    def rebuild(
        self,
        plugins: Mapping[str, tuple[PluginPolicy, Any]],
        names: Mapping[str, str] | None = None,
    ) -> None:
        """Build every hook's chain from ``plugins``: name → (policy, context).

        Implementations of plugins not named here (disabled ones) are left out.
        Order: policy ``order``, then ``tryfirst``/normal/``trylast``, then
        ``position`` (the plugin's place in the config), then name. ``names``
        maps a name registered in pluggy to the plugin name outcomes and failures
        give (a reloaded version registered as ``plugin@2`` answers as ``plugin``).
        The new chains replace the old at once; runs that started on the old
        chains finish on them (:meth:`in_flight` counts them).
        """
        self._built_from = (plugins, names)
        policies = {name: (attrs.evolve(policy, threaded=True)
                           if name in self._blocking else policy, context)
                    for name, (policy, context) in plugins.items()}
        hooks = self._hooks.of_kind("interception", "observation", "query")
        self._chains = build_chains(self._pm, sorted(hooks), self._hooks.modifiable, policies,
                                    names, self._threads_of)
        self._runs = {hook: (chain, bind_run(self, chain)) for hook, chain in self._chains.items()}
        if self._rebuilt is not None:
            self._rebuilt(self.chains())

    def start_guard(self) -> None:
        """Interrupt plugins that hold this event loop past their budget (call from the
        loop; a loop on the main thread is needed to interrupt, see
        :mod:`~servletkit.hooks._hang_guard`)."""
        self._guard.start()

    def close(self) -> None:
        """Stop the guard and let the worker threads end."""
        self._guard.stop()
        for threads in self._threads.values():
            threads.close()
        self._threads.clear()

    def _threads_of(self, registered_as: str) -> WorkerThreads:
        threads = self._threads.get(registered_as)
        if threads is None:
            threads = self._threads[registered_as] = WorkerThreads(registered_as)
        return threads

    def _move_to_threads(self, slot: Slot | None) -> None:
        """Run the sync hooks of the plugin whose ``slot`` blocked the loop in worker threads."""
        if slot is None or slot.registered_as in self._blocking:
            return
        if slot.is_async:
            log.error("plugin %r blocks the event loop inside an async def %s: it is "
                      "interrupted each time; await instead of blocking (or make the hook "
                      "sync: sync hooks of a blocking plugin run in worker threads)",
                      slot.plugin, _hook_of(self._chains, slot))
            return
        self._blocking.add(slot.registered_as)
        log.error("plugin %r blocked the event loop past its budget: its sync hooks run in "
                  "worker threads from now on (set threaded = true in its [plugins] table "
                  "to start that way)", slot.plugin)
        self.rebuild(*self._built_from)

    def chains(self) -> list[Chain]:
        """The current chains, one per hook."""
        return list(self._chains.values())

    def in_flight(self, registered_as: str) -> int:
        """How many runs are in flight on chains holding an implementation of the plugin
        registered in pluggy as ``registered_as`` (a reload destroys an old version once
        it has none). The hot path counts nothing for this: see
        :meth:`~servletkit.hooks._eventloop.Watchdog.awaiting_frames`.
        """
        return sum(
            1 for frame in self._watchdog.awaiting_frames()
            if frame.f_code.co_filename == RUN_FILE
            and isinstance(chain := frame.f_locals.get("chain"), Chain)
            and any(slot.registered_as == registered_as for slot in chain.slots))

    def all_sync(self, hook: str) -> bool:
        """Whether every implementation of ``hook`` is sync: then a call never suspends
        and may be driven without a task (see :func:`run_eagerly`). Async plugins'
        budgets need the caller's task, so their chains must run in one."""
        chain = self._chains.get(hook)
        return chain is None or not chain.async_count

    def chain(self, hook: str) -> tuple[Slot, ...]:
        """The slots of ``hook`` in call order (empty if no plugin implements it)."""
        chain = self._chains.get(hook)
        return () if chain is None else chain.slots

    def timings(self) -> list[SlotTimings]:
        """What each plugin's implementations have cost so far."""
        return [
            SlotTimings(slot.plugin, hook, slot.calls, slot.total_s, slot.failures,
                        slot.histogram())
            for hook, chain in sorted(self._chains.items())
            for slot in chain.slots
        ]

    def intercept(
        self, hook: str, *args: Any, modify: bool = True
    ) -> Coroutine[Any, Any, Outcome]:
        """Run the interception chain of ``hook``; ``args`` are its arguments but ``context``.

        Plugins run one after the other. The first ``Veto`` ends the chain. For a
        modifiable hook (the hook table's) the first argument is the event; a ``Modify``
        replaces its content for the plugins after it, and the outcome's
        ``event`` is the modified event. An answer that is no decision is a
        ``bad_answer`` failure. A failed plugin whose ``on_error`` is ``"deny"``
        ends the chain with a veto; otherwise the chain goes on without it.

        ``modify=False`` is for a wire that can only allow or refuse (the policy
        wire): there a ``Modify`` is a ``bad_answer`` failure.
        """
        try:
            chain, run = self._runs[hook]
        except KeyError:
            chain, run = self._chain(hook)
        # slots are called as call(subject, context): the one argument of a one-argument
        # hook (no star-args on the hot path), else the tuple of its arguments
        subject = args[0] if len(args) == 1 else args
        rule = Interception if modify else InterceptionWithoutModify
        return run(subject, rule, chain.no_opinion)

    async def observe(self, hook: str, *args: Any) -> tuple[PluginFailure, ...]:
        """Run every implementation of observation ``hook``; return the failures.

        Answers are ignored; failures are returned, never raised. Plugins run
        one after the other, in chain order, in the caller's task; but when
        several are async, the sync ones run first and then the async ones
        concurrently, each in a task of its own (a plugin coroutine runs in one
        task from start to end: anyio, under httpx, refuses a cancel scope that
        changes task).
        """
        chain, run = self._chain(hook)
        subject = args[0] if len(args) == 1 else args
        failures: tuple[PluginFailure, ...]
        if chain.async_count <= 1:
            failures = await run(subject, Observation, _NO_FAILURES)
            return failures
        inline = _part(chain, tuple(slot for slot in chain.slots if not slot.is_async),
                       chain.runs)  # counts the run for every slot
        failures = await bind_run(self, inline)(subject, Observation, _NO_FAILURES)
        alone = [_part(chain, (slot,), [0]) for slot in chain.slots if slot.is_async]
        results = await asyncio.gather(*(bind_run(self, part)(subject, Observation, _NO_FAILURES)
                                         for part in alone))
        return failures + tuple(failure for result in results for failure in result)

    async def observe_each(self, hook: str, items: Iterable[Any]) -> tuple[PluginFailure, ...]:
        """Observe ``items`` one after the other: an item's observers finish before the next's.

        The same as awaiting :meth:`observe` for each item (``hook`` takes one
        argument besides ``context``).
        """
        chain, run = self._chain(hook)
        if chain.async_count > 1:
            each = [await self.observe(hook, item) for item in items]
        else:  # the common case, without a coroutine per item for observe
            each = [await run(item, Observation, _NO_FAILURES) for item in items]
        return tuple(failure for failures in each for failure in failures)

    async def first_answer(
        self, hook: str, *args: Any, accept: Callable[[Any], bool] | None = None
    ) -> tuple[str | None, Any]:
        """Ask ``hook``'s implementations in chain order until one gives an accepted answer.

        ``None`` is never an answer; ``accept`` decides which other answers end
        the search (default: any). Returns ``(plugin, answer)``, or
        ``(None, None)`` when no answer was accepted. A plugin that fails is
        logged and counted, and the next one is asked.
        """
        _, run = self._chain(hook)
        subject = args[0] if len(args) == 1 else args
        take = accept or accept_any
        result: tuple[str | None, Any] = await run(subject, lambda _: FirstAnswer(take),
                                                   (None, None))
        return result

    def _chain(self, hook: str) -> tuple[Chain, Run]:
        """``hook``'s chain and its run routine (an empty chain's if no plugin implements it)."""
        found = self._runs.get(hook)
        if found is None:
            chain = Chain.of(hook, ())
            return chain, bind_run(self, chain)
        return found


_OWN_FILES: Final = frozenset([__file__, *(module.__file__ or "" for module in
                                            (_eventloop, _rules, _runner, _worker_threads))])
"""The files of code the run routine calls that is not a plugin's (for the hang guard)."""


def _hook_of(chains: Mapping[str, Chain], slot: Slot) -> str:
    return next((hook for hook, chain in chains.items() if slot in chain.slots), "a hook")


def _part(chain: Chain, slots: tuple[Slot, ...], runs: list[int]) -> Chain:
    """A chain over some of ``chain``'s slots, counting its runs in ``runs``."""
    return Chain(chain.hook, slots, sum(slot.is_async for slot in slots), chain.modifiable,
                 chain.no_opinion, runs)

