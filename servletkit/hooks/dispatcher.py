"""The dispatcher: runs a hook over the enabled plugins and combines their answers.

pluggy finds and validates the implementations; the dispatcher calls them,
because pluggy neither awaits coroutines nor gives each plugin its own context,
time budget and failure policy. The dispatcher is pure: no HTTP, no storage.

Hot-path notes (see ``benchmarks/dispatch.py``): the chain for each hook is a
tuple of :class:`Slot` built once per plugin change; outcomes that carry no
new data (nobody had an opinion; one plugin allowed) are built once and reused;
an ``async def`` implementation is awaited directly, and its time budget is
enforced by a :class:`_Watchdog` that costs one dict entry per call and only
acts when a plugin is still suspended past its deadline.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import operator
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Mapping
from typing import Any, Final, Literal, TypeVar

import attrs
import pluggy

from servletkit.hooks.decisions import Allow, Decision, Modify, Veto
from servletkit.hooks.specs import HOOKS
from servletkit.hooks.table import HookTable

log = logging.getLogger("servletkit.dispatcher")

T = TypeVar("T")

OnError = Literal["allow", "deny"]
FailureKind = Literal["raised", "timed_out", "bad_answer"]


@attrs.frozen
class PluginPolicy:
    """How the dispatcher treats one plugin: its place in chains and its failure policy."""

    order: int = 0
    position: int = 0
    timeout_ms: float = 1000.0
    on_error: OnError = "allow"


@attrs.frozen
class PluginFailure:
    """A plugin raised, overran its budget, or answered something that is not a decision."""

    plugin: str
    hook: str
    kind: FailureKind
    detail: str


@attrs.frozen
class Outcome:
    """The combined answer of an interception chain.

    ``decision`` is the first ``Veto``; otherwise ``Modify`` with the final
    content if any plugin modified the event; otherwise ``Allow()`` if any plugin
    allowed; otherwise ``None`` (nobody had an opinion). ``decided_by`` names the
    vetoing plugin, the last modifying plugin, or the first allowing plugin.
    ``event`` is the modified event when a plugin modified it, else ``None``.
    ``failures`` lists the plugins that raised, overran or answered nonsense.
    """

    hook: str
    decision: Decision | None
    decided_by: str | None
    event: Any = None
    failures: tuple[PluginFailure, ...] = ()

    @property
    def vetoed(self) -> bool:
        """Whether the chain ended in a Veto."""
        return type(self.decision) is Veto


@attrs.define(slots=True, eq=False)
class Slot:
    """One plugin's implementation of one hook, ready to call; also its timing record."""

    plugin: str
    call: Callable[..., Any]
    is_async: bool
    context: Any
    budget_s: float
    deny: bool
    allow_outcome: Outcome
    index: int = 0
    runs: list[int] = attrs.field(factory=lambda: [0])  # shared by the slots of one chain
    skipped: int = 0  # chain runs that ended before reaching this slot
    total_s: float = 0.0
    failures: int = 0

    @property
    def calls(self) -> int:
        """How often this implementation was called (counted without touching the hot path)."""
        return self.runs[0] - self.skipped


@attrs.frozen
class SlotTimings:
    """Per-plugin, per-hook timing figures since the chains were built."""

    plugin: str
    hook: str
    calls: int
    total_s: float
    failures: int


class _Resumed:
    """Awaitable that continues a coroutine the dispatcher already started.

    The dispatcher drives a coroutine once with ``send(None)``; if it suspended,
    the value it yielded (an asyncio future) must reach the running task, and the
    rest of the coroutine must run under that task. This does what ``yield from``
    would, starting from the first yield instead of the beginning.
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
            except BaseException as exc:  # forwarded into the plugin, e.g. cancellation
                try:
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _within(coro: Coroutine[Any, Any, Any], budget_s: float) -> Any:
    """Run a plugin coroutine to its end (in the task awaiting this) within ``budget_s``."""
    async with asyncio.timeout(budget_s):
        return await coro


async def _finish(coro: Coroutine[Any, Any, Any], yielded: Any, remaining_s: float) -> Any:
    """Let a suspended plugin coroutine finish within ``remaining_s`` seconds."""
    if remaining_s <= 0:
        coro.close()
        raise TimeoutError
    async with asyncio.timeout(remaining_s):
        return await _Resumed(coro, yielded)


def run_eagerly(coro: Coroutine[Any, Any, T]) -> tuple[bool, Any]:
    """Run ``coro`` until it first suspends, without a task.

    Returns ``(True, result)`` if it finished, else ``(False, rest)`` where
    ``rest`` is an awaitable that finishes it (await it from a task). Saves a
    task and a loop turn when, as usual, every plugin on the hook is sync; only
    for such hooks (:meth:`Dispatcher.all_sync`): the budgets of async plugins
    are enforced on the task that runs them.
    """
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    return False, _Resumed(coro, yielded)


_TASK, _DEADLINE, _FIRED = 0, 1, 2
_TIMED_OUT: Final = object()
_clock: Final = time.perf_counter

_current_tasks = getattr(asyncio.tasks, "_current_tasks", None)
# The running task of a loop. CPython 3.11 keeps them in a dict: reading it
# directly costs a tenth of asyncio.current_task(), which looks the loop up again.
_task_of: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None] = (
    _current_tasks.get if isinstance(_current_tasks, dict) else asyncio.current_task
)


class _Watchdog:
    """Cancels plugin coroutines that are still suspended after their deadline.

    Each task that runs interception chains with async plugins gets one record
    ``[task, deadline, fired]`` (reused across its calls, dropped when the task
    ends). The dispatcher writes the running plugin's deadline into it before
    awaiting the plugin and resets it to infinity afterwards. A timer, armed
    only while some record has a deadline, checks them every :attr:`TICK_S`
    seconds and cancels the task of a record past its deadline; the dispatcher
    then absorbs that cancellation and applies the plugin's failure policy.
    Precision is one tick. A dispatcher serves one event loop at a time.
    """

    TICK_S: Final = 0.005

    def __init__(self) -> None:
        self.records: dict[asyncio.Task[Any], list[Any]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.timer: asyncio.TimerHandle | None = None

    def record(self) -> list[Any]:
        """The current task's record; arms the timer."""
        loop = self.loop
        task = _task_of(loop) if loop is not None else None
        if task is None:  # first call, or a new event loop
            loop = self.loop = asyncio.get_running_loop()
            self.timer = None
            task = asyncio.current_task(loop)
            if task is None:
                raise RuntimeError("the dispatcher must be awaited from an asyncio task")
        record = self.records.get(task)
        if record is None:
            record = self.records[task] = [task, math.inf, False]
            task.add_done_callback(self.records.pop)
        if self.timer is None:
            self.timer = loop.call_later(self.TICK_S, self._check)
        return record

    @staticmethod
    def absorb(record: list[Any] | None) -> bool:
        """If the watchdog cancelled this call, undo the cancellation and say so."""
        if record is None or not record[_FIRED]:
            return False
        record[_FIRED] = False
        record[_TASK].uncancel()
        return True

    def _check(self) -> None:
        self.timer = None
        now = time.perf_counter()
        waiting = False
        for record in self.records.values():
            deadline = record[_DEADLINE]
            if deadline == math.inf or record[_FIRED]:
                continue
            if now > deadline:
                record[_FIRED] = True
                record[_TASK].cancel()
            else:
                waiting = True
        if waiting and self.loop is not None:
            self.timer = self.loop.call_later(self.TICK_S, self._check)


async def await_me_maybe(value: T | Awaitable[T]) -> T:
    """Return ``value``, awaiting it first if it is awaitable (off the hot path)."""
    if inspect.isawaitable(value):
        return await value
    return value


FAILURE_RECORD_ATTRIBUTE: Final = "plugin_failure"
"""The attribute of a failure's log record that holds its :class:`PluginFailure`."""


def _report(failure: PluginFailure, exc: BaseException | None = None) -> PluginFailure:
    """Log ``failure`` (with ``exc``'s traceback) and return it.

    The record carries the failure itself (:data:`FAILURE_RECORD_ATTRIBUTE`), so
    a log handler can show it without parsing the message: ``servletkit dev``
    prints one line per failure in its terminal. Failures are the slow path.
    """
    log.error("plugin %r failed in %s: %s", failure.plugin, failure.hook, failure.detail,
              exc_info=exc, extra={FAILURE_RECORD_ATTRIBUTE: failure})
    return failure


def _raised(slot: Slot, hook: str, exc: BaseException) -> PluginFailure:
    """Describe (and log) a plugin that raised ``exc``."""
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return _report(PluginFailure(slot.plugin, hook, "raised", detail), exc)


def _failure(slot: Slot, hook: str, kind: FailureKind, answer: object) -> PluginFailure:
    """Describe (and log) a plugin that overran its budget or answered nonsense."""
    if kind == "timed_out":
        detail = f"no answer within {slot.budget_s * 1000:g} ms"
    elif type(answer) is Modify:
        detail = f"returned Modify, but {hook} has no event to modify"
    else:
        detail = f"returned {answer!r}; expected Allow(), Modify(...), Veto(...) or None"
    return _report(PluginFailure(slot.plugin, hook, kind, detail))


class Dispatcher:
    """Runs interception chains and observation fan-outs over a set of plugins.

    Build it from a pluggy :class:`~pluggy.PluginManager` that has the plugins
    registered, and the per-plugin policies and contexts. Call :meth:`rebuild`
    after registering or unregistering plugins; in-flight calls finish on the
    chains they started with.
    """

    def __init__(self, pm: pluggy.PluginManager, hooks: HookTable = HOOKS) -> None:
        self._pm = pm
        self._hooks = hooks
        self._modifiable = hooks.modifiable
        self._chains: dict[str, tuple[Slot, ...]] = {}
        # per hook: ((call, context, is_async, budget_s, slot), ...), "has an async slot",
        # the outcome when nobody has an opinion (built once), the run counter, the slots
        self._fast_chains: dict[str, tuple[Any, ...]] = {}
        self._async_counts: dict[str, int] = {}  # per hook: how many implementations are async
        self._watchdog = _Watchdog()

    def rebuild(self, plugins: Mapping[str, tuple[PluginPolicy, Any]]) -> None:
        """Build every hook's chain from ``plugins``: name → (policy, context).

        Implementations of plugins not named here (disabled ones) are left out.
        Order: policy ``order``, then ``tryfirst``/normal/``trylast``, then
        ``position`` (the plugin's place in the config), then name.
        """
        chains: dict[str, tuple[Slot, ...]] = {}
        for hook_name in self._hooks.of_kind("interception", "observation", "query"):
            entries = []
            for impl, call in _implementations(self._pm, hook_name):
                if impl.plugin_name not in plugins:
                    continue
                policy, context = plugins[impl.plugin_name]
                rank = 0 if impl.tryfirst else 2 if impl.trylast else 1
                slot = Slot(
                    plugin=impl.plugin_name,
                    call=call,
                    is_async=inspect.iscoroutinefunction(impl.function),
                    context=context,
                    budget_s=policy.timeout_ms / 1000.0,
                    deny=policy.on_error == "deny",
                    allow_outcome=Outcome(hook_name, Allow(), impl.plugin_name),
                )
                entries.append(((policy.order, rank, policy.position, impl.plugin_name), slot))
            entries.sort(key=lambda entry: entry[0])
            runs = [0]
            for index, (_, slot) in enumerate(entries):
                slot.index, slot.runs = index, runs
            chains[hook_name] = tuple(slot for _, slot in entries)
        self._fast_chains = {
            hook: (
                tuple((s.call if len(_spec_args(self._pm, hook)) == 2 else _packed(s.call),
                       s.context, s.is_async, s.budget_s, s) for s in slots),
                any(s.is_async for s in slots),
                Outcome(hook, None, None),
                slots[0].runs if slots else [0],
                slots,
            )
            for hook, slots in chains.items()
        }
        self._async_counts = {
            hook: sum(slot.is_async for slot in slots) for hook, slots in chains.items()
        }
        self._chains = chains

    def all_sync(self, hook: str) -> bool:
        """Whether every implementation of ``hook`` is sync: then a call never suspends
        and may be driven without a task (see :func:`run_eagerly`). Async plugins'
        budgets need the caller's task, so their chains must run in one."""
        return not self._async_counts.get(hook, 0)

    def chain(self, hook: str) -> tuple[Slot, ...]:
        """The slots of ``hook`` in call order (empty if no plugin implements it)."""
        return self._chains.get(hook, ())

    def timings(self) -> list[SlotTimings]:
        """What each plugin's implementations have cost so far."""
        return [
            SlotTimings(slot.plugin, hook, slot.calls, slot.total_s, slot.failures)
            for hook, chain in sorted(self._chains.items())
            for slot in chain
        ]

    async def intercept(self, hook: str, *args: Any) -> Outcome:
        """Run the interception chain of ``hook``; ``args`` are its arguments but ``context``.

        For a modifiable hook (the hook table's) the first argument is the event; a ``Modify``
        replaces its content for the plugins after it, and the outcome's ``event``
        is the modified event.
        """
        chain, has_async, no_opinion, runs, slots = (
            self._fast_chains.get(hook) or self._empty_chain(hook)
        )
        runs[0] += 1
        # every call is call(subject, context): the one argument of a one-argument hook
        # (no star-args on the hot path), else the argument tuple (see _packed)
        subject = args[0] if len(args) == 1 else args
        clock = _clock
        timed_out = _TIMED_OUT
        allowed_by: Slot | None = None
        modified_by: Slot | None = None
        failures: tuple[PluginFailure, ...] = ()
        watch = None
        if has_async:
            watchdog = self._watchdog
            watch = watchdog.records.get(_task_of(watchdog.loop))  # type: ignore[arg-type]
            if watch is None or watchdog.timer is None:
                watch = watchdog.record()
            outer_deadline = watch[1]  # set by an enclosing call, restored on the way out
        start = clock()
        try:
            for call, context, is_async, budget_s, slot in chain:
                try:
                    if is_async:
                        watch[1] = start + budget_s  # type: ignore[index]
                        answer = await call(subject, context)
                    else:
                        answer = call(subject, context)
                except asyncio.CancelledError:
                    if not _Watchdog.absorb(watch):
                        self._stopped_at(slots, slot)
                        raise
                    answer = timed_out
                except Exception as exc:
                    answer = _raised(slot, hook, exc)
                end = clock()
                elapsed = end - start
                start = end
                slot.total_s += elapsed
                if answer is None and elapsed <= budget_s:
                    continue
                if elapsed > budget_s or answer is timed_out:
                    _Watchdog.absorb(watch)  # it may have fired after the plugin answered
                    answer = _failure(slot, hook, "timed_out", None)
                kind = type(answer)
                if kind is Allow:
                    if allowed_by is None:
                        allowed_by = slot
                    continue
                if kind is Veto:
                    self._stopped_at(slots, slot)
                    event = args[0] if modified_by is not None else None
                    return Outcome(hook, answer, slot.plugin, event, failures)
                if kind is Modify and hook in self._modifiable:
                    subject = subject.with_content(answer.content)
                    args = (subject, *args[1:])
                    modified_by = slot
                    continue
                if kind is not PluginFailure:
                    answer = _failure(slot, hook, "bad_answer", answer)
                slot.failures += 1
                failures = (*failures, answer)
                if slot.deny:
                    self._stopped_at(slots, slot)
                    veto = Veto(f"refused because the plugin {slot.plugin!r} failed")
                    event = args[0] if modified_by is not None else None
                    return Outcome(hook, veto, slot.plugin, event, failures)
        finally:
            if watch is not None:
                watch[1] = outer_deadline  # type: ignore[possibly-undefined]
        if modified_by is not None:
            event = args[0]
            return Outcome(hook, Modify(content=event.content), modified_by.plugin, event, failures)
        if allowed_by is not None:
            if failures:
                return Outcome(hook, Allow(), allowed_by.plugin, None, failures)
            return allowed_by.allow_outcome
        if failures:
            return Outcome(hook, None, None, None, failures)
        return no_opinion

    @staticmethod
    def _empty_chain(hook: str) -> tuple[Any, ...]:
        return (), False, Outcome(hook, None, None), [0], ()

    @staticmethod
    def _stopped_at(slots: tuple[Slot, ...], slot: Slot) -> None:
        """Count the chain's run as not reaching the slots after ``slot``."""
        for later in slots[slot.index + 1:]:
            later.skipped += 1

    async def observe(self, hook: str, *args: Any) -> tuple[PluginFailure, ...]:
        """Run every implementation of observation ``hook`` concurrently; wait for all.

        Each plugin gets its own budget; failures are logged and returned, never raised.
        A plugin coroutine runs in one task from start to end (anyio, under httpx,
        refuses a cancel scope that changes task): when it is the chain's only
        async implementation, in the caller's task; otherwise each in its own task.
        """
        pending: list[tuple[Slot, Awaitable[Any], float]] = []
        failures: list[PluginFailure] = []
        slots = self.chain(hook)
        if slots:
            slots[0].runs[0] += 1
        several_async = self._async_counts.get(hook, 0) > 1
        for slot in slots:
            start = time.perf_counter()
            try:
                answer = slot.call(*args, slot.context)
                if slot.is_async:
                    if several_async:
                        pending.append((slot, _within(answer, slot.budget_s), start))
                        continue
                    try:
                        yielded = answer.send(None)
                    except StopIteration:
                        pass
                    else:
                        remaining = slot.budget_s - (time.perf_counter() - start)
                        await _finish(answer, yielded, remaining)
                self._record(slot, start)
            except Exception as exc:
                failures.append(self._observation_failed(slot, hook, exc, start))
        if pending:
            results = await asyncio.gather(*(aw for _, aw, _ in pending), return_exceptions=True)
            for (slot, _, start), result in zip(pending, results, strict=True):
                if isinstance(result, Exception):
                    failures.append(self._observation_failed(slot, hook, result, start))
                elif isinstance(result, BaseException):
                    raise result
                else:
                    self._record(slot, start)
        return tuple(failures)

    async def observe_each(self, hook: str, items: Iterable[Any]) -> tuple[PluginFailure, ...]:
        """Observe ``items`` one after the other: an item's observers finish before the next's.

        The same as awaiting :meth:`observe` for each item (``hook`` takes one argument
        besides ``context``), but when every implementation is synchronous the items
        are run in one loop, without a coroutine per item.
        """
        if self._async_counts.get(hook, 0):
            failures: list[PluginFailure] = []
            for item in items:
                failures.extend(await self.observe(hook, item))
            return tuple(failures)
        slots = self.chain(hook)
        if not slots:
            return ()
        failures = []
        clock = time.perf_counter
        runs = 0
        if len(slots) == 1:  # one plugin: time the whole run, not each item
            (slot,) = slots
            call, context, start = slot.call, slot.context, clock()
            for item in items:
                runs += 1
                try:
                    call(item, context)
                except Exception as exc:
                    failures.append(self._observation_failed(slot, hook, exc, clock()))
            slot.total_s += clock() - start
        else:
            for item in items:
                runs += 1
                for slot in slots:
                    start = clock()
                    try:
                        slot.call(item, slot.context)
                    except Exception as exc:
                        failures.append(self._observation_failed(slot, hook, exc, start))
                        continue
                    slot.total_s += clock() - start
        slots[0].runs[0] += runs
        return tuple(failures)

    async def first_answer(
        self, hook: str, *args: Any, accept: Callable[[Any], bool] | None = None
    ) -> tuple[str | None, Any]:
        """Ask ``hook``'s implementations in chain order until one gives an accepted answer.

        ``accept`` decides which answers end the search (default: any but
        ``None``). Returns ``(plugin, answer)``, or ``(None, None)`` when no
        answer was accepted. A plugin that raises or overruns its budget is
        logged and counted, and the next one is asked.
        """
        slots = self.chain(hook)
        if slots:
            slots[0].runs[0] += 1
        for slot in slots:
            start = time.perf_counter()
            try:
                answer = slot.call(*args, slot.context)
                if slot.is_async:
                    async with asyncio.timeout(slot.budget_s):
                        answer = await answer
            except Exception as exc:
                self._observation_failed(slot, hook, exc, start)
                continue
            self._record(slot, start)
            if answer is not None if accept is None else accept(answer):
                self._stopped_at(slots, slot)
                return slot.plugin, answer
        return None, None

    @staticmethod
    def _record(slot: Slot, start: float) -> None:
        slot.total_s += time.perf_counter() - start

    def _observation_failed(
        self, slot: Slot, hook: str, exc: BaseException, start: float
    ) -> PluginFailure:
        self._record(slot, start)
        slot.failures += 1
        if isinstance(exc, TimeoutError):
            return _failure(slot, hook, "timed_out", None)
        return _raised(slot, hook, exc)


def _adapt_arguments(
    function: Callable[..., Any], impl_args: tuple[str, ...], spec_args: tuple[str, ...]
) -> Callable[..., Any]:
    """Return a callable taking the spec's arguments positionally.

    pluggy lets an implementation declare a subset of the spec's arguments, in
    any order. The common case (all of them, in order) is the function itself.
    """
    if impl_args == spec_args:
        return function
    picks = tuple(spec_args.index(name) for name in impl_args)
    if not picks:
        return lambda *args: function()
    if len(picks) == 1:
        (pick,) = picks
        return lambda *args: function(args[pick])
    take = operator.itemgetter(*picks)
    return lambda *args: function(*take(args))


def _spec_args(pm: pluggy.PluginManager, hook: str) -> tuple[str, ...]:
    caller = getattr(pm.hook, hook, None)
    return tuple(caller.spec.argnames) if caller is not None and caller.spec else ()


def _packed(call: Callable[..., Any]) -> Callable[[tuple[Any, ...], Any], Any]:
    """``call`` taking its arguments but ``context`` as one tuple (hooks of several arguments)."""
    return lambda args, context: call(*args, context)


def _implementations(
    pm: pluggy.PluginManager, hook: str
) -> list[tuple[pluggy.HookImpl, Callable[..., Any]]]:
    """Each implementation of ``hook``, with a callable taking the spec's arguments."""
    caller = getattr(pm.hook, hook, None)
    if caller is None:
        return []
    spec_args = _spec_args(pm, hook)
    return [(impl, _adapt_arguments(impl.function, tuple(impl.argnames), spec_args))
            for impl in caller.get_hookimpls()]


def iter_plugin_impls(
    pm: pluggy.PluginManager, hook: str, plugin_name: str
) -> Iterable[Callable[..., Any]]:
    """The implementations of ``hook`` registered by one plugin (for lifecycle calls)."""
    return [call for impl, call in _implementations(pm, hook) if impl.plugin_name == plugin_name]
