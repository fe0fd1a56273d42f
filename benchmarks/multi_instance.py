"""Appservice ingest (events/s) and module-wire decisions/s with one and two container
instances on PostgreSQL, beside one instance on the SQLite file, in the same run.

Run (needs PostgreSQL's binaries, ``apt-get install postgresql``, as the tests do)::

    .venv/bin/python benchmarks/multi_instance.py                 # 3 rounds of 5 s, ~3 min
    .venv/bin/python benchmarks/multi_instance.py --rounds 1 --duration 3

Setups, each ``servletkit run`` processes (one uvicorn worker each) with one no-op plugin
implementing ``on_stored_event`` and ``on_send_event``, the appservice and module wires on:

* ``sqlite-1``: one instance on the SQLite file (``synchronous = normal``): the baseline;
* ``pg-1``: one instance on PostgreSQL: the test suite's throwaway server
  (``tests/store/postgres_server.py``) on a loopback port, with ``fsync`` and
  ``synchronous_commit`` off, so the figures are an upper bound for a durable server;
* ``pg-2``: two instances on that PostgreSQL database.

Load, from this process (asyncio): **ingest**: ``--connections`` HTTP clients (default 1:
Synapse sends an appservice one transaction at a time) PUT 20-event transactions with
fresh ids, spread round robin over the instances (what nginx
does in docs/deploy.md), each waiting for its answer, over raw keep-alive connections
(``raw_http.py``; with httpx the client itself collapsed under 8 connections);
**decisions**: one module-wire
connection per instance (as Synapse's module keeps), ``--in-flight`` requests outstanding
on each, ``event`` ops answered by the no-op chain. Every round measures every setup, in
rotating order; ratios against ``sqlite-1`` are taken per round and their median printed.
The load generator shares the machine's cores with the instances and the database.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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
from tests.store.postgres_server import PostgresServer, postgres_bin  # noqa: E402

EVENTS_PER_TXN = 20
NOOP = '''
from servletkit import hookimpl

@hookimpl
def on_stored_event(event):
    return None

@hookimpl
def on_send_event(event):
    return None
'''
EVENT = {"event_id": "$bench", "room_id": "!room:localhost", "type": "m.room.message",
         "sender": "@alice:localhost", "content": {"msgtype": "m.text", "body": "hello"},
         "origin_server_ts": 1_700_000_000_000, "unsigned": {}}


def transaction() -> dict[str, Any]:
    return {"events": [dict(EVENT, event_id=f"${uuid.uuid4().hex}") for _ in
                       range(EVENTS_PER_TXN)], "ephemeral": []}


class Setup:
    """``count`` instances on ``store`` (a ``[store]`` table as TOML lines)."""

    def __init__(self, root: Path, name: str, count: int, store: str, env: dict[str, str]):
        self.name = name
        self.instances: list[tuple[int, int]] = []  # (http port, module port)
        self.processes = []
        for index in range(count):
            workdir = root / f"{name}-{index}"
            workdir.mkdir()
            process, port, module_port = start_instance(workdir, store, "noop", env)
            self.processes.append(process)
            self.instances.append((port, module_port))

    def stop(self) -> None:
        for process in self.processes:
            stop_process(process, 10)


async def ingest(setup: Setup, connections: int, duration: float) -> float:
    """Events per second the instances acknowledged.

    Each client keeps one connection to every instance and sends its transactions round
    robin over them (raw HTTP/1.1, :mod:`raw_http`: httpx was the bottleneck here).
    """
    done = 0
    deadline = time.monotonic() + duration

    async def client() -> None:
        nonlocal done
        streams = [await asyncio.open_connection("127.0.0.1", port)
                   for port, _ in setup.instances]
        turns = itertools.cycle(streams)
        try:
            while time.monotonic() < deadline:
                reader, writer = next(turns)
                writer.write(raw_http.request(
                    "PUT", f"/_matrix/app/v1/transactions/{uuid.uuid4().hex}",
                    orjson.dumps(transaction()), HEADERS))
                status, body = await raw_http.read_response(reader)
                assert status == 200, (status, body)
                done += EVENTS_PER_TXN
        finally:
            for _, writer in streams:
                writer.close()

    start = time.monotonic()
    await asyncio.gather(*(client() for _ in range(connections)))
    return done / (time.monotonic() - start)


async def decisions(setup: Setup, in_flight: int, duration: float) -> float:
    """Module-wire answers per second over one connection per instance."""
    answered = 0
    deadline = time.monotonic() + duration

    async def connection(port: int) -> None:
        nonlocal answered
        reader, writer = await module_client(port)
        ids = itertools.count(1)
        for _ in range(in_flight):
            writer.write(encode({"id": next(ids), "op": "event", "event": EVENT}))
        outstanding = in_flight
        while outstanding:
            answer = await read_frame(reader)
            assert "error" not in answer, answer
            outstanding -= 1
            answered += 1
            if time.monotonic() < deadline:
                writer.write(encode({"id": next(ids), "op": "event", "event": EVENT}))
                outstanding += 1
        writer.close()

    start = time.monotonic()
    await asyncio.gather(*(connection(module_port) for _, module_port in setup.instances))
    return answered / (time.monotonic() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--in-flight", type=int, default=32)
    args = parser.parse_args()
    bin_dir = postgres_bin()
    if bin_dir is None:
        print("PostgreSQL is not installed (apt-get install postgresql)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-multi-") as folder:
        root = Path(folder)
        env = python_path_env(plugin_site(root, "noop", NOOP))
        server = PostgresServer(bin_dir)
        server.start()
        setups: list[Setup] = []
        try:
            url = server.url()
            setups = [
                Setup(root, "sqlite-1", 1, f'[store]\npath = "{root / "bench.db"}"', env),
                Setup(root, "pg-1", 1, f'[store]\nurl = "{url}"', env),
                Setup(root, "pg-2", 2, f'[store]\nurl = "{url}"', env),
            ]
            for setup in setups:  # warm up: first requests open pools and connections
                asyncio.run(ingest(setup, args.connections, 1.0))
                asyncio.run(decisions(setup, args.in_flight, 1.0))
            figures: dict[tuple[str, str], list[float]] = {}
            for round_ in range(args.rounds):
                order = setups[round_ % 3:] + setups[:round_ % 3]
                for setup in order:
                    for kind, measure, load in (("ingest", ingest, args.connections),
                                                ("decisions", decisions, args.in_flight)):
                        rate = asyncio.run(measure(setup, load, args.duration))
                        figures.setdefault((kind, setup.name), []).append(rate)
        finally:
            for setup in setups:
                setup.stop()
            server.stop()
    for kind, unit in (("ingest", "events/s"), ("decisions", "decisions/s")):
        base = figures[(kind, "sqlite-1")]
        print(f"\n{kind} ({unit}), median of {args.rounds} rounds; ratio vs sqlite-1 per round:")
        for name in ("sqlite-1", "pg-1", "pg-2"):
            rates = figures[(kind, name)]
            ratio = statistics.median(r / b for r, b in zip(rates, base, strict=True))
            print(f"  {name:9} {statistics.median(rates):10.0f}   {ratio:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
