"""Events per second through ``PUT /_matrix/app/v1/transactions/{txnId}``, and the latency
of one transaction at a time: servletkit beside a bare Starlette endpoint and mautrix-python.

Run (needs ``wrk``: ``apt-get install -y wrk``; and the ``bench`` extra)::

    .venv/bin/python benchmarks/appservice_throughput.py       # 3 rounds of 5 s runs, ~2 min
    .venv/bin/python benchmarks/appservice_throughput.py --rounds 5 --duration 10

Each server runs in its own process, one at a time, on 127.0.0.1:

* **servletkit**: the container's app (``build_app``) with the appservice wire, one no-op
  plugin implementing ``on_stored_event``, the SQLite store (WAL, ``synchronous = normal``,
  or ``full`` with ``--synchronous full``) with deduplication on; served by uvicorn, one
  worker, access log off, its loop and parser uvicorn's ``auto``: uvloop and httptools,
  which a plain ``pip install servletkit`` brings (the run prints which served).
* **bare**: a Starlette endpoint that checks the token (``hmac.compare_digest``) and parses
  the body (orjson, the parser servletkit uses) and answers ``{}``; same uvicorn settings.
* **mautrix**: mautrix-python's ``AppService`` with one no-op event handler, served by its
  own aiohttp server (it is an aiohttp app, so uvicorn cannot serve it); one process.
* **servletkit-idle** (for reference, not a target): servletkit whose only plugin
  implements no event hook, so no ``Event`` is built; dedupe and the durable commit remain.

Load: ``wrk`` with a Lua script that PUTs the same 100-event transaction body (Synapse's
client-event format, ~29 KB) under a unique transaction id per request. Throughput:
``--connections`` concurrent connections, one wrk thread. Latency: one connection, one
transaction at a time (as Synapse sends them), wrk's p50/p99. All servers run side by
side and each round measures every one of them, in rotating order; the ratios are taken
per round (same run, same load) and their median reported, because the 2-core machine
is shared and its speed drifts between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HS_TOKEN = "bench-hs-token"
EVENTS_PER_TXN = 100
PREFIX = "/_matrix/app/v1/transactions/"

LUA = """
local counter = 0
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
function init(args)
  local f = io.open(args[1], "rb")
  body = f:read("*a")
  f:close()
  run = args[2]
  auth = "Bearer " .. args[3]
  prefix = args[4]
end
function request()
  counter = counter + 1
  local headers = {}
  headers["Authorization"] = auth
  headers["Content-Type"] = "application/json"
  return wrk.format("PUT", prefix .. run .. "-" .. tid .. "-" .. counter, headers, body)
end
"""


def transaction_body() -> bytes:
    """A 100-event transaction as Synapse sends it."""
    events = [
        {
            "age": 12, "content": {"body": f"message number {i} in the benchmark room",
                                   "msgtype": "m.text"},
            "event_id": f"$benchmark-event-{i:04d}-abcdefghijklmnopqrstuv",
            "origin_server_ts": 1_700_000_000_000 + i, "room_id": f"!room{i % 7}:localhost",
            "sender": "@alice:localhost", "type": "m.room.message",
            "unsigned": {"age": 12}, "user_id": "@alice:localhost",
        }
        for i in range(EVENTS_PER_TXN)
    ]
    return json.dumps({"events": events, "ephemeral": []}).encode()


# -- the servers (run in child processes: ``serve KIND PORT WORKDIR``) -----------------------


def servletkit_app(workdir: Path, store_path: str, *, event_hooks: bool = True) -> Any:
    """The container's ASGI app as the benchmark serves it (also driven in-process by
    ``appservice_instructions.py``)."""
    synchronous = os.environ.get("BENCH_SYNCHRONOUS", "normal")
    from servletkit import hookimpl
    from servletkit.container.app import build_app
    from servletkit.container.config import parse_config
    from servletkit.container.plugins import PluginSource, installed_plugins
    from servletkit.container.runtime import Container

    class NoOp:
        @hookimpl
        def on_stored_event(self, event):
            return None

    class Idle:
        @hookimpl
        def servlet_init(self, context):
            return None

    tables = {name: {"enabled": False} for name in installed_plugins()}
    tables["noop"] = {}
    config = parse_config({
        "appservice": {"as_token": "bench-as-token", "hs_token": HS_TOKEN},
        "store": {"path": store_path, "synchronous": synchronous},
        "plugins": tables,
    }, workdir / "servletkit.toml")
    plugin = NoOp() if event_hooks else Idle()
    container = Container(config, [PluginSource("noop", obj=plugin)])
    container.load()
    return build_app(container)


def serve_servletkit(port: int, workdir: Path, *, event_hooks: bool = True) -> None:
    import uvicorn

    uvicorn.run(servletkit_app(workdir, f"bench-{port}.db", event_hooks=event_hooks),
                host="127.0.0.1", port=port, log_level="warning", access_log=False,
                lifespan="on")


def serve_servletkit_idle(port: int, workdir: Path) -> None:
    serve_servletkit(port, workdir, event_hooks=False)


def serve_bare(port: int, workdir: Path) -> None:
    import orjson
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    token = HS_TOKEN.encode()

    async def transaction(request: Request) -> Response:
        header = request.headers.get("authorization", "")
        if not hmac.compare_digest(header.removeprefix("Bearer ").encode(), token):
            return JSONResponse({"errcode": "M_FORBIDDEN"}, 403)
        orjson.loads(await request.body())
        return Response(b"{}", media_type="application/json")

    app = Starlette(routes=[Route(PREFIX + "{txn_id}", transaction, methods=["PUT"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def serve_mautrix(port: int, workdir: Path) -> None:
    import logging

    from mautrix.appservice import AppService

    logging.basicConfig(level=logging.WARNING)

    async def main() -> None:
        appservice = AppService(server="http://127.0.0.1:9", domain="localhost",
                                as_token="bench-as-token", hs_token=HS_TOKEN,
                                bot_localpart="bench", id="bench")

        @appservice.matrix_event_handler
        async def noop(event: object) -> None:
            return None

        await appservice.start("127.0.0.1", port)
        await asyncio.Event().wait()

    asyncio.run(main())


SERVERS = {"servletkit": serve_servletkit, "bare": serve_bare, "mautrix": serve_mautrix,
           "servletkit-idle": serve_servletkit_idle}


# -- the driver ---------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(kind: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "serve", kind, str(port), str(workdir)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    body = json.dumps({"events": []}).encode()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}{PREFIX}warmup", data=body, method="PUT",
                headers={"Authorization": f"Bearer {HS_TOKEN}",
                         "Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=1).read()
            return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"{kind} server did not start")


def run_wrk(port: int, script: Path, body_file: Path, run_id: str, *, connections: int,
            duration: float) -> dict[str, float]:
    """Run wrk; return requests/s, non-2xx count, and latency percentiles in ms."""
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
         "-s", str(script), f"http://127.0.0.1:{port}",
         "--", str(body_file), run_id, HS_TOKEN, PREFIX],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    latency = {p: _ms(m) for p, m in re.findall(r"^\s+(50|99)%\s+(\S+)$", output, re.M)}
    return {"rps": rps, "non2xx": float(errors.group(1)) if errors else 0.0,
            "p50_ms": latency.get("50", float("nan")), "p99_ms": latency.get("99", float("nan"))}


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds; each runs every server once, in rotating order")
    parser.add_argument("--synchronous", choices=["normal", "full"], default="normal",
                        help="servletkit's [store] synchronous: normal survives a crash of "
                             "the process, full also a power loss (an fsync per commit)")
    args = parser.parse_args()
    os.environ["BENCH_SYNCHRONOUS"] = args.synchronous
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    load: dict[str, list[dict[str, float]]] = {kind: [] for kind in SERVERS}
    single: dict[str, list[dict[str, float]]] = {kind: [] for kind in SERVERS}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        body_file = workdir / "transaction.json"
        body_file.write_bytes(transaction_body())
        script = workdir / "transactions.lua"
        script.write_text(LUA)
        servers = {kind: start_server(kind, workdir) for kind in SERVERS}
        try:
            health = urllib.request.urlopen(
                f"http://127.0.0.1:{servers['servletkit'][1]}/_servletkit/health", timeout=5)
            stack = json.loads(health.read())["server"]
            kinds = list(SERVERS)
            for n in range(args.rounds):
                for kind in kinds[n % len(kinds):] + kinds[:n % len(kinds)]:
                    port = servers[kind][1]
                    load[kind].append(run_wrk(port, script, body_file, f"load{n}",
                                              connections=args.connections,
                                              duration=args.duration))
                    single[kind].append(run_wrk(port, script, body_file, f"single{n}",
                                                connections=1, duration=args.duration / 2))
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(10)
    median = statistics.median
    print(f"PUT /transactions, {EVENTS_PER_TXN} events each; {args.connections} connections, "
          f"{args.duration:g} s per run, {args.rounds} rounds (cpus: {os.cpu_count()}); "
          f"store synchronous={args.synchronous}; medians over the rounds; servletkit and bare "
          f"on {stack['loop']} + {stack['http']} (the installed defaults); "
          f"load average {os.getloadavg()[0]:.2f} at the end")
    print(f"{'server':<16} {'events/s':>10} {'txn/s':>7} {'non-2xx':>8}   "
          "one at a time:      p50       p99")
    for kind in SERVERS:
        rps = median([r["rps"] for r in load[kind]])
        errors = sum(r["non2xx"] for r in load[kind] + single[kind])
        p50 = median([r["p50_ms"] for r in single[kind]])
        p99 = median([r["p99_ms"] for r in single[kind]])
        print(f"{kind:<16} {rps * EVENTS_PER_TXN:>10,.0f} {rps:>7,.0f} {errors:>8,.0f}   "
              f"{'':>14} {p50:>6.3f} ms {p99:>6.3f} ms")
    vs_bare = [o["rps"] / b["rps"] for o, b in zip(load["servletkit"], load["bare"], strict=True)]
    vs_mautrix = [o["rps"] / m["rps"]
                  for o, m in zip(load["servletkit"], load["mautrix"], strict=True)]
    p50 = median([r["p50_ms"] for r in single["servletkit"]])
    print("servletkit / bare per round:    "
          + "  ".join(f"{r:.1%}" for r in vs_bare)
          + f"   median {median(vs_bare):.1%}  (target >= 75%: "
          + ("met" if median(vs_bare) >= 0.75 else "NOT met") + ")")
    print("servletkit / mautrix per round: "
          + "  ".join(f"{r:.1f}x" for r in vs_mautrix)
          + f"   median {median(vs_mautrix):.1f}x  (target >= 20x: "
          + ("met" if median(vs_mautrix) >= 20 else "NOT met") + ")")
    print(f"servletkit one transaction at a time: p50 {p50:.3f} ms  (target < 1 ms)")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "serve":
        SERVERS[sys.argv[2]](int(sys.argv[3]), Path(sys.argv[4]))
    else:
        main()
