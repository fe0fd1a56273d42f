"""Prometheus metrics on ``GET /metrics`` of the ``[server]`` listener (``[server] metrics``).

Two sources, neither in the dispatcher's hot path:

* **At each scrape**, the dispatcher's own figures (:meth:`Dispatcher.timings`):
  per plugin and hook, its calls, the time they took (a histogram: the
  dispatcher counts only calls slower than the first bound per bucket) and its
  failures.
* **From the wires**, where they turn an interception outcome into an answer and
  an audit record: per plugin and hook, the decisions by kind
  (``allow``, ``modify``, ``veto``) and the failures by kind (``raised``,
  ``timed_out``, ``bad_answer``); per wire and hook, a latency histogram of the
  whole chain; per wire, its requests, open connections and queue depth
  (requests received and not yet answered); the appservice wire's transaction
  lag (from the oldest event's ``origin_server_ts`` to the transaction's commit).

Nothing is registered at import: each container has its own registry, made
on first use (:func:`metrics_for`), and none when ``[server] metrics`` is off,
so the wires then pay nothing.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from servletkit.hooks.dispatcher import LATENCY_BUCKETS, Outcome

if TYPE_CHECKING:
    from servletkit.container.runtime import Container

LAG_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
"""Seconds: a healthy homeserver pushes within a second; a container that was down, hours."""


class _Timings:
    """A collector reading the dispatcher's per-plugin figures when scraped."""

    def __init__(self, container: Container) -> None:
        self._container = weakref.ref(container)

    def collect(self) -> Iterator[Metric]:
        labels = ["plugin", "hook"]
        calls = CounterMetricFamily("servletkit_plugin_calls", "Calls of a plugin's hook "
                                    "implementation", labels=labels)
        seconds = HistogramMetricFamily("servletkit_plugin_call_seconds", "Time a plugin's "
                                        "hook implementation took", labels=labels)
        failures = CounterMetricFamily("servletkit_plugin_failures", "Calls that raised, "
                                       "overran the budget or answered nonsense", labels=labels)
        container = self._container()
        for timing in container.dispatcher.timings() if container is not None else ():
            key = [timing.plugin, timing.hook]
            calls.add_metric(key, timing.calls)
            bounds = [*(f"{bound:g}" for bound in LATENCY_BUCKETS), "+Inf"]
            seconds.add_metric(key, list(zip(bounds, timing.histogram, strict=True)),
                               timing.total_s)
            failures.add_metric(key, timing.failures)
        yield from (calls, seconds, failures)


class Metrics:
    """One container's metrics; the wires report to it."""

    def __init__(self, container: Container) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Timings(container))
        registry = self.registry
        self.decisions = Counter(
            "servletkit_decisions", "Decisions (not 'no opinion') by plugin, hook and kind",
            ["wire", "plugin", "hook", "decision"], registry=registry)
        self.failures = Counter(
            "servletkit_plugin_failures_by_kind", "Plugin failures by kind (raised, timed_out, "
            "bad_answer)", ["wire", "plugin", "hook", "kind"], registry=registry)
        self.latency = Histogram(
            "servletkit_hook_seconds", "Time a hook's whole chain took, as a wire saw it",
            ["wire", "hook"], buckets=LATENCY_BUCKETS, registry=registry)
        self.requests = Counter(
            "servletkit_wire_requests", "Requests a wire received, by kind",
            ["wire", "kind"], registry=registry)
        self.connections = Gauge(
            "servletkit_wire_connections", "Connections open on a wire", ["wire"],
            registry=registry)
        self.queued = Gauge(
            "servletkit_wire_queue_depth", "Requests a wire received and has not answered yet",
            ["wire"], registry=registry)
        self.lag = Histogram(
            "servletkit_transaction_lag_seconds", "From a transaction's oldest event's "
            "origin_server_ts to its commit", ["wire"], buckets=LAG_BUCKETS, registry=registry)

    def outcome(self, wire: str, outcome: Outcome, seconds: float) -> None:
        """An interception chain's ``outcome``, which took ``seconds``."""
        self.latency.labels(wire, outcome.hook).observe(seconds)
        if outcome.decision is not None:
            self.decisions.labels(wire, outcome.decided_by or "", outcome.hook,
                                  type(outcome.decision).__name__.lower()).inc()
        for failure in outcome.failures:
            self.failures.labels(wire, failure.plugin, failure.hook, failure.kind).inc()

    def count_connections(self, wire: str, count: Callable[[], int]) -> None:
        """Report ``count()`` as ``wire``'s open connections at each scrape."""
        self.connections.labels(wire).set_function(count)

    def count_queued(self, wire: str, count: Callable[[], int]) -> None:
        """Report ``count()`` as ``wire``'s requests not yet answered at each scrape."""
        self.queued.labels(wire).set_function(count)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


_METRICS: weakref.WeakKeyDictionary[Container, Metrics] = weakref.WeakKeyDictionary()


def metrics_for(container: Container) -> Metrics | None:
    """``container``'s metrics, or ``None`` when ``[server] metrics`` is off."""
    if not container.config.server.metrics:
        return None
    metrics = _METRICS.get(container)
    if metrics is None:
        metrics = _METRICS[container] = Metrics(container)
    return metrics


def metrics_routes(container: Container) -> list[BaseRoute]:
    """``GET /metrics`` when ``[server] metrics`` is on."""
    metrics = metrics_for(container)
    if metrics is None:
        return []

    async def scrape(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return [Route("/metrics", scrape, methods=["GET"])]
