"""The generated run routines: every shape of chain behaves as the dispatcher's rules say,
and a run's frame carries what the hang guard and ``in_flight`` read."""

from __future__ import annotations

import itertools
import sys
from typing import Any

import pytest

from servletkit import Event, Modify, Veto, hookimpl
from servletkit.hooks._runner import RUN_FILE
from servletkit.hooks.context import PluginContext
from tests.hooks.test_dispatcher import EVENT, AsyncRecorder, Recorder, dispatcher_for, policy

SHAPES = [shape for length in (1, 2, 3) for shape in itertools.product((False, True),
                                                                          repeat=length)]


def recorder(is_async: bool, seen: list[str], label: str, answer: Any = None) -> Any:
    return (AsyncRecorder if is_async else Recorder)(seen, label, answer)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: "".join("as"[not a] for a in shape))
async def test_each_shape_pipelines_modifications_and_stops_at_a_veto(
    shape: tuple[bool, ...],
) -> None:
    """Every slot before the last modifies the event; the last vetoes; one more after it is
    never called. Calls, skips and the outcome are counted as by the dispatcher's rules."""
    seen: list[str] = []
    last = len(shape) - 1
    plugins = [(f"p{k}", recorder(is_async, seen, f"p{k}",
                                  Veto("no") if k == last else Modify(content={"body": f"m{k}"})),
                policy(k)) for k, is_async in enumerate(shape)]
    plugins.append(("after", Recorder(seen, "after"), policy(len(shape))))
    d = dispatcher_for(*plugins)
    outcome = await d.intercept("on_send_event", EVENT)
    assert seen == [f"p{k}:{'hello' if k == 0 else f'm{k - 1}'}" for k in range(len(shape))]
    assert (outcome.decision, outcome.decided_by) == (Veto("no"), f"p{last}")
    calls = {timing.plugin: timing.calls for timing in d.timings()}
    assert calls == {**{f"p{k}": 1 for k in range(len(shape))}, "after": 0}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: "".join("as"[not a] for a in shape))
async def test_each_shape_applies_failure_policies(shape: tuple[bool, ...]) -> None:
    """A raising plugin with ``on_error = "allow"`` is skipped; the last plugin raises with
    ``"deny"`` and its failure vetoes; every failure is reported."""
    last = len(shape) - 1

    def raising(k: int, is_async: bool) -> Any:
        class Raising:
            if is_async:
                @hookimpl
                async def on_send_event(self, event: Event) -> None:
                    raise RuntimeError(f"r{k}")
            else:
                @hookimpl
                def on_send_event(self, event: Event) -> None:
                    raise RuntimeError(f"r{k}")
        return Raising()

    d = dispatcher_for(*[(f"p{k}", raising(k, is_async),
                          policy(k, on_error="deny" if k == last else "allow"))
                         for k, is_async in enumerate(shape)])
    outcome = await d.intercept("on_send_event", EVENT)
    assert outcome.vetoed and outcome.decided_by == f"p{last}"
    assert [(f.plugin, f.kind, f.detail) for f in outcome.failures] == [
        (f"p{k}", "raised", f"RuntimeError: r{k}") for k in range(len(shape))]


async def test_a_run_frame_names_its_dispatcher_slot_start_and_budget() -> None:
    """The hang guard and ``in_flight`` find a run by its code's file and read these."""
    frames: list[Any] = []

    class Looks:
        @hookimpl
        def on_send_event(self, event: Event, context: PluginContext) -> None:
            frames.append(sys._getframe(1))

    d = dispatcher_for(("looks", Looks(), policy(timeout_ms=250.0)))
    await d.intercept("on_send_event", EVENT)
    run = frames[0]
    assert run.f_code.co_filename == RUN_FILE
    variables = run.f_locals
    assert variables["self"] is d
    assert variables["slot"].plugin == "looks"
    assert variables["budget_s"] == 0.25
    assert isinstance(variables["start"], float)
    assert variables["chain"].hook == "on_send_event"
