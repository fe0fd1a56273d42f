"""Soak: minutes of load through the appservice and module wires of one ``servletkit run``,
with its memory sampled; nothing may be lost or doubled.

Run::

    .venv/bin/python benchmarks/soak.py               # 180 s (30 s warm-up), ~3.5 min
    .venv/bin/python benchmarks/soak.py --quick       # 20 s (5 s warm-up)
    .venv/bin/python benchmarks/soak.py --duration 600 --warm-up 60

One container (SQLite store, ``synchronous = normal``) runs a plugin that counts every
event it is given in its own store: ``a/<event_id>`` from ``on_stored_event`` (the
appservice wire), ``m/<event_id>`` from ``on_send_event`` on the module wire. Load from
this process, at the same time: one appservice connection PUTting 20-event transactions
one at a time, as Synapse sends them (a non-200 answer is retried with the same id, as
Synapse does), and one module-wire connection with ``--in-flight`` ``event`` requests
outstanding. Both stop at ``--duration`` seconds or at ``--max-events`` events each,
whichever comes first. The container's RSS is read from ``/proc`` every second.

Printed: events/s per wire, latency percentiles (a transaction, a decision), RSS after the
warm-up and at the end and its growth (target under 5%), and from the plugin's store
after the container stopped: events counted 0 times (lost) or more than once (doubled).
Exits 1 if anything was lost or doubled, a request failed, or memory grew 5% or more.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import raw_http

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from container_load import HEADERS, module_client, read_frame, start_instance  # noqa: E402

from servletkit.dev.embedded_synapse import stop_process  # noqa: E402
from servletkit.testing import plugin_site, python_path_env  # noqa: E402
from servletkit.wires.module.protocol import encode  # noqa: E402

EVENTS_PER_TXN = 20
GROWTH_TARGET = 0.05
PLUGIN = '''
from servletkit import hookimpl


async def _count(context, key):
    await context.store.put(key, await context.store.get(key, 0) + 1)


@hookimpl
async def on_stored_event(event, context):
    await _count(context, f"a/{event.event_id}")


@hookimpl
async def on_send_event(event, context):
    if event.wire == "module":
        await _count(context, f"m/{event.event_id}")
'''


def event(event_id: str) -> dict[str, Any]:
    return {"event_id": event_id, "room_id": "!soak:localhost", "type": "m.room.message",
            "sender": "@alice:localhost", "origin_server_ts": int(time.time() * 1000),
            "content": {"msgtype": "m.text", "body": "a message of the soak"}, "unsigned": {}}


class Load:
    """What the load sent and how long each answer took."""

    def __init__(self, deadline: float, max_events: int) -> None:
        self.deadline = deadline
        self.max_events = max_events
        self.appservice: list[str] = []
        self.module: list[str] = []
        self.txn_latency: list[float] = []
        self.decision_latency: list[float] = []
        self.retries = 0
        self.failures: list[str] = []

    def going(self, sent: list[str]) -> bool:
        return time.monotonic() < self.deadline and len(sent) < self.max_events

    async def transactions(self, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while self.going(self.appservice):
                ids = [f"$a{uuid.uuid4().hex}" for _ in range(EVENTS_PER_TXN)]
                body = orjson.dumps({"events": [event(i) for i in ids]})
                request = raw_http.request("PUT", f"/_matrix/app/v1/transactions/"
                                           f"{uuid.uuid4().hex}", body, HEADERS)
                started = time.monotonic()
                for _ in range(10):  # a homeserver retries the same transaction
                    writer.write(request)
                    status, answer = await raw_http.read_response(reader)
                    if status == 200:
                        break
                    self.retries += 1
                    await asyncio.sleep(0.5)
                else:
                    self.failures.append(f"transaction: {status} {answer[:200]!r}")
                    return
                self.txn_latency.append(time.monotonic() - started)
                self.appservice.extend(ids)
        finally:
            writer.close()

    async def decisions(self, port: int, in_flight: int) -> None:
        reader, writer = await module_client(port)
        try:
            numbers = itertools.count(1)
            pending: dict[int, tuple[str, float]] = {}

            def send() -> None:
                number, event_id = next(numbers), f"$m{uuid.uuid4().hex}"
                pending[number] = (event_id, time.monotonic())
                writer.write(encode({"id": number, "op": "event", "event": event(event_id)}))

            for _ in range(in_flight):
                send()
            while pending:
                answer = await read_frame(reader)
                event_id, started = pending.pop(answer["id"])
                if set(answer) != {"id"}:
                    self.failures.append(f"decision: {answer}")
                    return
                self.decision_latency.append(time.monotonic() - started)
                self.module.append(event_id)
                if self.going(self.module):
                    send()
        finally:
            writer.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def sample(pid: int, until: float, samples: list[tuple[float, float]]) -> None:
    start = time.monotonic()
    while time.monotonic() < until:
        samples.append((time.monotonic() - start, rss_mb(pid)))
        await asyncio.sleep(1.0)


async def soak(args: argparse.Namespace, pid: int, port: int, module_port: int
               ) -> tuple[Load, list[tuple[float, float]]]:
    deadline = time.monotonic() + args.duration
    load = Load(deadline, args.max_events)
    samples: list[tuple[float, float]] = []
    await asyncio.gather(load.transactions(port), load.decisions(module_port, args.in_flight),
                         sample(pid, deadline, samples))
    return load, samples


def counted(database: Path) -> dict[str, int]:
    with sqlite3.connect(database) as db:
        return {key: int(value) for key, value in db.execute(
            "SELECT key, value FROM plugin_data WHERE plugin = 'soak'")}


def percentiles(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    cuts = statistics.quantiles(values, n=100)
    return f"p50 {cuts[49] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms, max " \
           f"{max(values) * 1000:.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load")
    parser.add_argument("--warm-up", type=float, default=30.0,
                        help="seconds before the memory baseline")
    parser.add_argument("--max-events", type=int, default=2_000_000,
                        help="events per wire at most")
    parser.add_argument("--in-flight", type=int, default=16,
                        help="module-wire requests outstanding")
    parser.add_argument("--quick", action="store_true", help="20 s, 5 s warm-up")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warm_up = 20.0, 5.0
    with tempfile.TemporaryDirectory(prefix="soak-") as folder:
        root = Path(folder)
        database = root / "soak.db"
        env = python_path_env(plugin_site(root, "soak", PLUGIN))
        process, port, module_port = start_instance(root, f'[store]\npath = "{database}"',
                                                    "soak", env)
        try:
            started = time.monotonic()
            load, samples = asyncio.run(soak(args, process.pid, port, module_port))
            took = time.monotonic() - started
        finally:
            stop_process(process, 10)
        counts = counted(database)
    expected = [f"a/{i}" for i in load.appservice] + [f"m/{i}" for i in load.module]
    lost = sum(1 for key in expected if counts.get(key, 0) == 0)
    doubled = sum(1 for key in expected if counts.get(key, 0) > 1)
    after_warm_up = [rss for at, rss in samples if at >= args.warm_up]
    window = max(1, len(after_warm_up) // 10)
    base = statistics.median(after_warm_up[:window]) if after_warm_up else float("nan")
    end = statistics.median(after_warm_up[-window:]) if after_warm_up else float("nan")
    growth = (end - base) / base
    print(f"soak: {took:.0f} s of load, warm-up {args.warm_up:g} s, {len(samples)} RSS samples")
    print(f"appservice: {len(load.appservice)} events in {len(load.txn_latency)} transactions, "
          f"{len(load.appservice) / took:.0f} events/s; a transaction: "
          f"{percentiles(load.txn_latency)}; {load.retries} retried")
    print(f"module wire: {len(load.module)} decisions, {len(load.module) / took:.0f}/s; "
          f"a decision: {percentiles(load.decision_latency)}")
    print(f"RSS: {samples[0][1]:.1f} MB at start, {base:.1f} MB after the warm-up, "
          f"{end:.1f} MB at the end ({window} s medians): growth {growth:+.1%} "
          f"(target under {GROWTH_TARGET:.0%}); max {max(r for _, r in samples):.1f} MB")
    print(f"counted in the plugin's store: {len(expected)} events sent and acknowledged, "
          f"{lost} lost, {doubled} doubled")
    for failure in load.failures:
        print("FAILED:", failure)
    return 1 if lost or doubled or load.failures or not growth < GROWTH_TARGET else 0


if __name__ == "__main__":
    sys.exit(main())
