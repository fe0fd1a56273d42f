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
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Mapping
from typing import Any, Final, Literal, TypeVar

import attrs
import pluggy

from servletkit.hooks.decisions import Allow, Decision, Modify, Veto
from servletkit.hooks.specs import INTERCEPTION_HOOKS, MODIFIABLE_HOOKS, OBSERVATION_HOOKS

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
    calls: int = 0
    total_s: float = 0.0
    failures: int = 0


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
    task and a loop turn when, as usual, every plugin on the hook is sync.
    """
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    return False, _Resumed(coro, yielded)


_TASK, _DEADLINE, _FIRED = 0, 1, 2
_TIMED_OUT: Final = object()
_EMPTY_CHAIN: Final[tuple[tuple[Slot, ...], bool]] = ((), False)
_NO_OPINION: Final = {hook: Outcome(hook, None, None) for hook in INTERCEPTION_HOOKS}

_current_tasks = getattr(asyncio.tasks, "_current_tasks", None)
# The running task of a loop. CPython 3.11 keeps them in a dict: reading it
# directly costs a tenth of asyncio.current_task(), which looks the loop up again.
_task_of: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None] = (
    _current_tasks.get if isinstance(_current_tasks, dict) else asyncio.current_task
)


class _Watchdog:
    """Cancels plugin coroutines that are still suspended after their deadline.

    An interception call that has async plugins registers a record
    ``[task, deadline, fired]`` and updates the deadline before each async
    plugin. A timer, armed only while records exist, checks them every
    :attr:`TICK_S` seconds and cancels the task of any record past its
    deadline; the dispatcher absorbs that cancellation and applies the
    plugin's failure policy. Precision is one tick.
    """

    TICK_S: Final = 0.005

    def __init__(self) -> None:
        self._watched: dict[int, list[Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def watch(self) -> list[Any]:
        loop = self._loop
        task = _task_of(loop) if loop is not None else None
        if task is None:  # first call, or a different (new) event loop
            loop = self._loop = asyncio.get_running_loop()
            self._timer = None
            task = asyncio.current_task(loop)
        record = [task, math.inf, False]
        self._watched[id(record)] = record
        if self._timer is None:
            self._timer = loop.call_later(self.TICK_S, self._check)
        return record

    def unwatch(self, record: list[Any]) -> None:
        del self._watched[id(record)]

    @staticmethod
    def absorb(record: list[Any] | None) -> bool:
        """If the watchdog cancelled this call, undo the cancellation and say so."""
        if record is None or not record[_FIRED]:
            return False
        record[_FIRED] = False
        record[_TASK].uncancel()
        return True

    def _check(self) -> None:
        self._timer = None
        if not self._watched or self._loop is None:
            return
        now = time.perf_counter()
        for record in self._watched.values():
            if not record[_FIRED] and now > record[_DEADLINE]:
                record[_FIRED] = True
                record[_TASK].cancel()
        self._timer = self._loop.call_later(self.TICK_S, self._check)


def _event_of(hook: str, args: tuple[Any, ...], modified_by: Slot | None) -> Any:
    return args[0] if modified_by is not None and hook in MODIFIABLE_HOOKS else None


def _no_opinion(hook: str) -> Outcome:
    return _NO_OPINION.get(hook) or Outcome(hook, None, None)


async def await_me_maybe(value: T | Awaitable[T]) -> T:
    """Return ``value``, awaiting it first if it is awaitable (off the hot path)."""
    if inspect.isawaitable(value):
        return await value
    return value


def _bad_answer(hook: str, answer: object) -> str:
    if type(answer) is Modify and hook not in MODIFIABLE_HOOKS:
        return f"returned Modify, but {hook} has no event to modify"
    return f"returned {answer!r}; expected Allow(), Modify(...), Veto(...) or None"


class Dispatcher:
    """Runs interception chains and observation fan-outs over a set of plugins.

    Build it from a pluggy :class:`~pluggy.PluginManager` that has the plugins
    registered, and the per-plugin policies and contexts. Call :meth:`rebuild`
    after registering or unregistering plugins; in-flight calls finish on the
    chains they started with.
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._pm = pm
        self._chains: dict[str, tuple[tuple[Slot, ...], bool]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._watchdog = _Watchdog()

    def rebuild(self, plugins: Mapping[str, tuple[PluginPolicy, Any]]) -> None:
        """Build every hook's chain from ``plugins``: name → (policy, context).

        Implementations of plugins not named here (disabled ones) are left out.
        Order: policy ``order``, then ``tryfirst``/normal/``trylast``, then
        ``position`` (the plugin's place in the config), then name.
        """
        chains: dict[str, tuple[tuple[Slot, ...], bool]] = {}
        for hook_name in INTERCEPTION_HOOKS | OBSERVATION_HOOKS:
            caller = getattr(self._pm.hook, hook_name, None)
            if caller is None:
                continue
            spec_args = tuple(caller.spec.argnames) if caller.spec else ()
            entries = []
            for impl in caller.get_hookimpls():
                if impl.plugin_name not in plugins:
                    continue
                policy, context = plugins[impl.plugin_name]
                rank = 0 if impl.tryfirst else 2 if impl.trylast else 1
                slot = Slot(
                    plugin=impl.plugin_name,
                    call=_adapt_arguments(impl.function, tuple(impl.argnames), spec_args),
                    is_async=inspect.iscoroutinefunction(impl.function),
                    context=context,
                    budget_s=policy.timeout_ms / 1000.0,
                    deny=policy.on_error == "deny",
                    allow_outcome=Outcome(hook_name, Allow(), impl.plugin_name),
                )
                entries.append(((policy.order, rank, policy.position, impl.plugin_name), slot))
            entries.sort(key=lambda entry: entry[0])
            slots = tuple(slot for _, slot in entries)
            chains[hook_name] = (slots, any(slot.is_async for slot in slots))
        self._chains = chains

    def chain(self, hook: str) -> tuple[Slot, ...]:
        """The slots of ``hook`` in call order (empty if no plugin implements it)."""
        return self._chains.get(hook, _EMPTY_CHAIN)[0]

    def timings(self) -> list[SlotTimings]:
        """What each plugin's implementations have cost so far."""
        return [
            SlotTimings(slot.plugin, hook, slot.calls, slot.total_s, slot.failures)
            for hook, (chain, _) in sorted(self._chains.items())
            for slot in chain
        ]

    async def intercept(self, hook: str, *args: Any) -> Outcome:
        """Run the interception chain of ``hook``; ``args`` are its arguments but ``context``.

        For :data:`MODIFIABLE_HOOKS` the first argument is the event; a ``Modify``
        replaces its content for the plugins after it, and the outcome's ``event``
        is the modified event.
        """
        chain, has_async = self._chains.get(hook, _EMPTY_CHAIN)
        clock = time.perf_counter
        allowed_by: Slot | None = None
        modified_by: Slot | None = None
        failures: tuple[PluginFailure, ...] = ()
        watch = self._watchdog.watch() if has_async else None
        try:
            start = clock()
            for slot in chain:
                try:
                    if slot.is_async:
                        watch[_DEADLINE] = start + slot.budget_s  # type: ignore[index]
                        answer = await slot.call(*args, slot.context)
                        if watch[_FIRED]:  # type: ignore[index]
                            raise asyncio.CancelledError
                    else:
                        answer = slot.call(*args, slot.context)
                except asyncio.CancelledError:
                    if not self._watchdog.absorb(watch):
                        raise
                    answer = _TIMED_OUT
                except Exception as exc:
                    log.exception("plugin %r failed in %s", slot.plugin, hook)
                    answer = PluginFailure(slot.plugin, hook, "raised", repr(exc))
                end = clock()
                elapsed = end - start
                start = end
                slot.calls += 1
                slot.total_s += elapsed
                if elapsed > slot.budget_s or answer is _TIMED_OUT:
                    answer = PluginFailure(
                        slot.plugin, hook, "timed_out",
                        f"no answer within {slot.budget_s * 1000:g} ms",
                    )
                    log.error("plugin %r failed in %s: %s", slot.plugin, hook, answer.detail)
                if answer is None:
                    continue
                kind = type(answer)
                if kind is Allow:
                    if allowed_by is None:
                        allowed_by = slot
                    continue
                if kind is Veto:
                    return Outcome(hook, answer, slot.plugin, _event_of(hook, args, modified_by),
                                   failures)
                if kind is Modify and hook in MODIFIABLE_HOOKS:
                    args = (args[0].with_content(answer.content), *args[1:])
                    modified_by = slot
                    continue
                if kind is not PluginFailure:
                    answer = PluginFailure(slot.plugin, hook, "bad_answer",
                                           _bad_answer(hook, answer))
                    log.error("plugin %r failed in %s: %s", slot.plugin, hook, answer.detail)
                slot.failures += 1
                failures = (*failures, answer)
                if slot.deny:
                    veto = Veto(f"refused because the plugin {slot.plugin!r} failed "
                                f"({answer.kind})")
                    return Outcome(hook, veto, slot.plugin, _event_of(hook, args, modified_by),
                                   failures)
        finally:
            if watch is not None:
                self._watchdog.unwatch(watch)
        if modified_by is not None:
            event = args[0]
            return Outcome(hook, Modify(content=event.content), modified_by.plugin, event, failures)
        if allowed_by is not None:
            if failures:
                return Outcome(hook, Allow(), allowed_by.plugin, None, failures)
            return allowed_by.allow_outcome
        if failures:
            return Outcome(hook, None, None, None, failures)
        return _no_opinion(hook)

    async def observe(self, hook: str, *args: Any) -> tuple[PluginFailure, ...]:
        """Run every implementation of observation ``hook`` concurrently; wait for all.

        Each plugin gets its own budget; failures are logged and returned, never raised.
        """
        pending: list[tuple[Slot, Awaitable[Any], float]] = []
        failures: list[PluginFailure] = []
        for slot in self.chain(hook):
            start = time.perf_counter()
            try:
                answer = slot.call(*args, slot.context)
                if slot.is_async:
                    try:
                        yielded = answer.send(None)
                    except StopIteration:
                        pass
                    else:
                        remaining = slot.budget_s - (time.perf_counter() - start)
                        pending.append((slot, _finish(answer, yielded, remaining), start))
                        continue
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

    def observe_soon(self, hook: str, *args: Any) -> asyncio.Task[tuple[PluginFailure, ...]]:
        """Start :meth:`observe` in the background and return its task (kept referenced)."""
        task = asyncio.ensure_future(self.observe(hook, *args))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def drain(self) -> None:
        """Wait for the background observation tasks started so far."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    @staticmethod
    def _record(slot: Slot, start: float) -> None:
        slot.calls += 1
        slot.total_s += time.perf_counter() - start

    def _observation_failed(
        self, slot: Slot, hook: str, exc: BaseException, start: float
    ) -> PluginFailure:
        self._record(slot, start)
        slot.failures += 1
        if isinstance(exc, TimeoutError):
            detail = f"no answer within {slot.budget_s * 1000:g} ms"
            log.error("plugin %r failed in %s: %s", slot.plugin, hook, detail)
            return PluginFailure(slot.plugin, hook, "timed_out", detail)
        log.error("plugin %r failed in %s", slot.plugin, hook, exc_info=exc)
        return PluginFailure(slot.plugin, hook, "raised", repr(exc))


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

    def adapted(*args: Any) -> Any:
        return function(*[args[i] for i in picks])

    return adapted


def iter_plugin_impls(
    pm: pluggy.PluginManager, hook: str, plugin_name: str
) -> Iterable[Callable[..., Any]]:
    """The implementations of ``hook`` registered by one plugin (for lifecycle calls)."""
    caller = getattr(pm.hook, hook, None)
    if caller is None:
        return ()
    spec_args = tuple(caller.spec.argnames) if caller.spec else ()
    return [
        _adapt_arguments(impl.function, tuple(impl.argnames), spec_args)
        for impl in caller.get_hookimpls()
        if impl.plugin_name == plugin_name
    ]
