"""What the dispatcher runs: per-plugin policies, slots, chains, and their results.

A :class:`Chain` is one hook's implementations in call order, each a :class:`Slot`
holding everything a call needs (the callable adapted to the spec's arguments,
the plugin's context, its budget and failure policy) and its timing figures.
Chains are built once per plugin change by :func:`build_chains`.
"""

from __future__ import annotations

import bisect
import inspect
import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal

import attrs
import pluggy

from servletkit.hooks._worker_threads import WorkerThreads
from servletkit.hooks.decisions import Allow, Decision, Veto

OnError = Literal["allow", "deny"]
"""A plugin's failure policy in an interception chain: carry on, or refuse."""

LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                          1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the per-plugin latency histogram: plugins answer in well
under a millisecond, up to their budget (1 s by default). A call within the first bound
costs the dispatcher nothing extra: only slower calls are counted per bucket."""

FailureKind = Literal["raised", "timed_out", "bad_answer"]
"""How a plugin failed: it raised, overran its budget, or answered something else."""


@attrs.frozen
class PluginPolicy:
    """How the dispatcher treats one plugin: its place in chains and its failure policy.

    ``order`` then ``position`` (its place in the config) place it in chains;
    ``timeout_ms`` is its budget per call, in every mode; ``on_error`` says
    what a failure means where the mode has a decision (interception only):
    ``"allow"`` skips the plugin, ``"deny"`` vetoes. ``threaded`` runs its sync
    hooks in worker threads, so that a blocking call cannot hold up the event loop.
    """

    order: int = 0
    position: int = 0
    timeout_ms: float = 1000.0
    on_error: OnError = "allow"
    threaded: bool = False


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


@attrs.define(eq=False)
class Slot:
    """One plugin's implementation of one hook, ready to call; also its timing record.

    ``call(subject, context)`` calls the implementation: ``subject`` is the hook's
    one argument besides ``context``, or the tuple of its arguments when it has
    several. ``deny`` is the plugin's ``on_error == "deny"``; ``allow_outcome``
    the outcome of a chain that only this plugin allowed, built once.
    ``registered_as`` is the plugin's name in pluggy: ``plugin``, or a versioned
    name for a plugin loaded again by a reload (``plugin@2``).
    """

    plugin: str
    call: Callable[[Any, Any], Any]
    is_async: bool
    context: Any
    budget_s: float
    deny: bool
    allow_outcome: Outcome
    registered_as: str = ""
    runs: list[int] = attrs.field(factory=lambda: [0])  # shared by the slots of one chain
    skipped: int = 0  # chain runs that ended before reaching this slot
    total_s: float = 0.0
    failures: int = 0
    slow: list[int] = attrs.field(factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    """Calls slower than ``LATENCY_BUCKETS[0]``, by the index of the first bound they are
    within (``len(LATENCY_BUCKETS)``: beyond the last); index 0 stays 0."""

    @property
    def calls(self) -> int:
        """How often this implementation was called (counted without touching the hot path)."""
        return self.runs[0] - self.skipped

    def count_slow(self, elapsed_s: float) -> None:
        """Count a call slower than the first latency bound (off the hot path)."""
        self.slow[bisect.bisect_left(LATENCY_BUCKETS, elapsed_s)] += 1

    def histogram(self) -> tuple[int, ...]:
        """Calls within each bound of ``LATENCY_BUCKETS``, cumulative, then all calls."""
        counts, within = [], self.calls - sum(self.slow)
        for index in range(len(LATENCY_BUCKETS)):
            within += self.slow[index]
            counts.append(within)
        return (*counts, self.calls)


@attrs.frozen
class SlotTimings:
    """Per-plugin, per-hook timing figures since the chains were built."""

    plugin: str
    hook: str
    calls: int
    total_s: float
    failures: int
    histogram: tuple[int, ...] = ()
    """Calls within each bound of :data:`LATENCY_BUCKETS`, cumulative, then all calls."""


@attrs.frozen
class Chain:
    """One hook's slots in call order, and what every run of them shares.

    ``async_count`` is how many slots are ``async def``; ``modifiable`` whether a
    ``Modify`` may replace the hook's event; ``no_opinion`` the outcome when no
    plugin answers, built once; ``runs`` counts the chain's runs, the list every
    slot's :attr:`Slot.runs` is. The dispatcher runs it through a routine generated
    for its shape (:mod:`servletkit.hooks._runner`).
    """

    hook: str
    slots: tuple[Slot, ...]
    async_count: int
    modifiable: bool
    no_opinion: Outcome
    runs: list[int]

    @classmethod
    def of(cls, hook: str, slots: tuple[Slot, ...], *, modifiable: bool = False) -> Chain:
        """The chain of ``slots``; they count their runs in the chain's counter from now."""
        runs = [0]
        for slot in slots:
            slot.runs = runs
        return cls(hook, slots, sum(slot.is_async for slot in slots), modifiable,
                   Outcome(hook, None, None), runs)


def build_chains(
    pm: pluggy.PluginManager,
    hooks: Iterable[str],
    modifiable: frozenset[str],
    plugins: Mapping[str, tuple[PluginPolicy, Any]],
    names: Mapping[str, str] | None = None,
    threads: Callable[[str], WorkerThreads] | None = None,
) -> dict[str, Chain]:
    """The chain of each of ``hooks`` over ``plugins``: name → (policy, context).

    Implementations of plugins not named in ``plugins`` (disabled ones) are left
    out. Order: policy ``order``, then ``tryfirst``/normal/``trylast``, then
    ``position`` (the plugin's place in the config), then name. ``names`` maps a
    name registered in pluggy to the plugin name the slots carry (a reloaded
    version, ``plugin@2``, answers as ``plugin``). The sync implementations of a
    plugin whose policy is ``threaded`` run in ``threads(name)`` and are awaited.
    """
    names = names or {}
    chains = {}
    for hook in hooks:
        one_argument = len(_spec_args(pm, hook)) == 2  # the argument and ``context``
        entries = []
        for impl, call in _implementations(pm, hook):
            if impl.plugin_name not in plugins:
                continue
            policy, context = plugins[impl.plugin_name]
            rank = 0 if impl.tryfirst else 2 if impl.trylast else 1
            plugin = names.get(impl.plugin_name, impl.plugin_name)
            call = call if one_argument else _packed(call)
            is_async = inspect.iscoroutinefunction(impl.function)
            if policy.threaded and not is_async and threads is not None:
                call, is_async = threads(impl.plugin_name).wrap(call), True
            slot = Slot(
                plugin=plugin,
                call=call,
                is_async=is_async,
                context=context,
                budget_s=policy.timeout_ms / 1000.0,
                deny=policy.on_error == "deny",
                allow_outcome=Outcome(hook, Allow(), plugin),
                registered_as=impl.plugin_name,
            )
            entries.append(((policy.order, rank, policy.position, plugin), slot))
        entries.sort(key=lambda entry: entry[0])
        chains[hook] = Chain.of(hook, tuple(slot for _, slot in entries),
                                modifiable=hook in modifiable)
    return chains


def iter_plugin_impls(
    pm: pluggy.PluginManager, hook: str, plugin_name: str
) -> Iterable[Callable[..., Any]]:
    """The implementations of ``hook`` registered by one plugin (for lifecycle calls)."""
    return [call for impl, call in _implementations(pm, hook) if impl.plugin_name == plugin_name]


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
