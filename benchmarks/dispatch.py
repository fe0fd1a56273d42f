"""Per-event cost of an interception chain, against two baselines measured in the same run.

Run::

    .venv/bin/python benchmarks/dispatch.py            # full run (about a minute)
    .venv/bin/python benchmarks/dispatch.py --quick    # fewer rounds

For chains of 1, 5 and 10 no-op plugins (sync, async, and mixed; each plugin
with a time budget and a failure policy, half "allow", half "deny"), it measures
``await dispatcher.intercept("on_send_event", event)`` and, on the very same
implementations:

* **pluggy**: the bare ``pm.hook.on_send_event(event=..., context=...)`` call
  (pluggy neither awaits coroutines nor applies budgets; for async
  implementations it only creates the coroutine objects);
* **await loop**: a bare loop that calls each implementation in turn and
  awaits the ones that are coroutines, nothing else.

Each figure is the best of several interleaved rounds (the machine is shared
and noisy; the minimum is the least disturbed). Targets, for 5 plugins, as
ratios from one run: the chain costs at most 0.6x the bare pluggy call with sync
implementations (pluggy's own call on async ones is no baseline: it awaits
nothing) and at most 3x the bare await loop over async implementations (issue
18); the async chain at most 0.4x and 2x (issue 17). The script prints every
ratio and exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pluggy

from servletkit import Event, hookimpl
from servletkit.container.plugins import new_plugin_manager
from servletkit.hooks.context import PluginContext
from servletkit.hooks.dispatcher import Dispatcher, PluginPolicy

EVENT = Event.from_json({
    "event_id": "$bench", "room_id": "!room:localhost", "type": "m.room.message",
    "sender": "@alice:localhost", "content": {"msgtype": "m.text", "body": "hello"},
    "origin_server_ts": 1,
})


class SyncNoop:
    @hookimpl
    def on_send_event(self, event: Event, context: PluginContext) -> None:
        return None


class AsyncNoop:
    @hookimpl
    async def on_send_event(self, event: Event, context: PluginContext) -> None:
        return None


Built = tuple[pluggy.PluginManager, Dispatcher, list[Callable[..., Any]]]


def build(kind: str, count: int) -> Built:
    """A plugin manager and dispatcher with ``count`` no-op plugins of ``kind``."""
    pm = new_plugin_manager()
    plugins = {}
    for i in range(count):
        is_async = kind == "async" or (kind == "mixed" and i % 2 == 0)
        name = f"noop{i}"
        pm.register(AsyncNoop() if is_async else SyncNoop(), name=name)
        policy = PluginPolicy(order=0, position=i, timeout_ms=500.0,
                              on_error="deny" if i % 2 else "allow")
        plugins[name] = (policy, PluginContext.create(name, {}))
    dispatcher = Dispatcher(pm)
    dispatcher.rebuild(plugins)
    impls = [slot.call for slot in dispatcher.chain("on_send_event")]
    return pm, dispatcher, impls


async def time_per_event(run: Callable[[int], Awaitable[None]], events: int) -> float:
    """Seconds per event of ``run(events)``, with the garbage collector paused."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        await run(events)
        return (time.perf_counter() - start) / events
    finally:
        gc.enable()


def runners(kind: str, count: int) -> dict[str, Callable[[int], Awaitable[None]]]:
    pm, dispatcher, impls = build(kind, count)
    hook = pm.hook.on_send_event
    context = PluginContext.create("bench", {})
    coroutine_impls = [inspect.iscoroutinefunction(f) for f in impls]
    pairs = list(zip(impls, coroutine_impls, strict=True))

    async def chain(n: int) -> None:
        intercept = dispatcher.intercept
        for _ in range(n):
            await intercept("on_send_event", EVENT)

    async def pluggy_call(n: int) -> None:
        for _ in range(n):
            for coro in hook(event=EVENT, context=context):  # async impls: close unawaited
                coro.close()

    async def await_loop(n: int) -> None:
        for _ in range(n):
            for impl, is_coroutine in pairs:
                if is_coroutine:
                    await impl(EVENT, context)
                else:
                    impl(EVENT, context)

    return {"chain": chain, "pluggy": pluggy_call, "await loop": await_loop}


async def measure(rounds: int, events: int) -> dict[tuple[str, int, str], float]:
    """Best seconds-per-event for every (kind, plugins, variant), interleaved round by round."""
    cases = {(kind, count): runners(kind, count)
             for kind in ("sync", "async", "mixed") for count in (1, 5, 10)}
    best: dict[tuple[str, int, str], float] = {}
    for _ in range(rounds):
        for (kind, count), variants in cases.items():
            for name, run in variants.items():
                figure = await time_per_event(run, events)
                key = (kind, count, name)
                best[key] = min(best.get(key, figure), figure)
    return best


def report(best: dict[tuple[str, int, str], float]) -> bool:
    """Print the table and the targets; return whether the targets are met."""
    print(f"{'kind':6} {'plugins':>7} {'chain µs':>9} {'pluggy µs':>10} {'loop µs':>8} "
          f"{'chain/pluggy':>13} {'chain/loop':>11}")
    for kind in ("sync", "async", "mixed"):
        for count in (1, 5, 10):
            chain, plug, loop = (best[(kind, count, v)] for v in ("chain", "pluggy", "await loop"))
            print(f"{kind:6} {count:>7} {chain * 1e6:>9.2f} {plug * 1e6:>10.2f} {loop * 1e6:>8.2f} "
                  f"{chain / plug:>13.2f} {chain / loop:>11.2f}")
    pluggy_sync = best[("sync", 5, "pluggy")]
    loop_async = best[("async", 5, "await loop")]
    ok = True
    print("\ntargets for 5 plugins (baselines: pluggy over sync impls "
          f"{pluggy_sync * 1e6:.2f} µs, await loop over async impls {loop_async * 1e6:.2f} µs):")
    for kind in ("sync", "async", "mixed"):
        chain = best[(kind, 5, "chain")]
        r_pluggy, r_loop = chain / pluggy_sync, chain / loop_async
        met = r_pluggy <= 0.6 and r_loop <= 3.0
        ok &= met
        print(f"  {kind:6} chain {chain * 1e6:.2f} µs = {r_pluggy:.2f}x pluggy (≤0.6), "
              f"{r_loop:.2f}x await loop (≤3.0)  {'met' if met else 'MISSED'}")
    chain = best[("async", 5, "chain")]
    r_pluggy, r_loop = chain / pluggy_sync, chain / loop_async
    met = r_pluggy <= 0.4 and r_loop <= 2.0
    print(f"issue 17's target, async: {r_pluggy:.2f}x pluggy (≤0.4), {r_loop:.2f}x await loop "
          f"(≤2.0)  {'met' if met else 'MISSED'}")
    return ok and met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 9")
    args = parser.parse_args()
    rounds, events = (3, 20_000) if args.quick else (9, 50_000)
    best = asyncio.run(measure(rounds, events))
    return 0 if report(best) else 1


if __name__ == "__main__":
    sys.exit(main())
