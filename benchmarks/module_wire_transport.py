"""Why the module wire is a framed TCP listener and not an HTTP route: round trip and CPU.

Command (from the repository root, after ``scripts/bootstrap``)::

    .venv/bin/python benchmarks/module_wire_transport.py [--requests 4000] [--runs 3]

A Twisted client (what runs inside Synapse) sends one ``on_send_event`` request
at a time to a container process running the no-op plugin, over:

* ``framed``: the module wire itself (``ContainerClient`` to the container's
  module-wire listener, uvicorn's loop);
* ``http``: a hand-written HTTP/1.1 keep-alive POST per request (already far
  cheaper for Synapse than its general HTTP client) to a Starlette route in the
  same container app doing the same work (parse the event, run the chain).

It prints the median and p90 round trip, the client's CPU per request and the
container process's CPU per request, per run, and the ratios framed/http. The
configurations alternate run by run; the machine is shared, so compare ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from module_wire_latency import SECRET, NoopPlugin, _wait_port

from servletkit.testing.synapse import free_port

EVENT = {"event_id": "$e", "room_id": "!r:localhost", "type": "m.room.message",
         "sender": "@a:localhost", "content": {"msgtype": "m.text", "body": "hello"},
         "origin_server_ts": 1, "unsigned": {}}


def serve(kind: str, port: int) -> None:
    """The container with the no-op plugin: module wire on ``port``, or an HTTP route."""
    import uvicorn
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import BaseRoute, Route

    from servletkit.container.app import build_app
    from servletkit.container.config import parse_config
    from servletkit.container.plugins import PluginSource, installed_plugins
    from servletkit.container.runtime import Container
    from servletkit.hooks.events import Event

    disabled = {name: {"enabled": False} for name in installed_plugins()}
    if kind == "framed":
        config = parse_config({"module": {"enabled": True, "port": port, "secret": SECRET},
                               "plugins": disabled})
        http_port = free_port()
    else:
        config, http_port = parse_config({"plugins": disabled}), port
    container = Container(config, [PluginSource("noop", obj=NoopPlugin())])
    container.load()

    class HttpWire:
        """The same decision behind an HTTP route (a wire of the container's app)."""

        name = "module"
        honours_modify = True

        def routes(self) -> list[BaseRoute]:
            async def event(request: Request) -> Response:
                body = await request.json()
                await container.dispatcher.intercept(
                    "on_send_event", Event.from_json(body["event"], wire="module"))
                return Response(b'{"id":1}', media_type="application/json")

            return [Route("/event", event, methods=["POST"])]

        async def settled(self, timeout_s: float) -> None:
            pass

        def lifespan(self) -> contextlib.AbstractAsyncContextManager[None]:
            return contextlib.nullcontext()

    app = build_app(container, wires=None if kind == "framed" else [HttpWire()])
    uvicorn.run(app, host="127.0.0.1", port=http_port, log_level="warning", access_log=False)


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def measure(kind: str, requests: int) -> dict[str, float]:
    """Start the container for ``kind``, time ``requests`` sequential round trips."""
    from twisted.internet import defer, protocol, reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    from servletkit.synapse.client import ContainerClient

    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", kind, str(port)])
    _wait_port(port)

    class Http(protocol.Protocol):
        """A minimal HTTP/1.1 keep-alive client: one request in flight."""

        def connectionMade(self) -> None:
            self.buffer = b""
            self.transport.setTcpNoDelay(True)

        def request(self, body: bytes) -> defer.Deferred[Any]:
            self.answer: defer.Deferred[Any] = defer.Deferred()
            self.transport.write(b"POST /event HTTP/1.1\r\nHost: c\r\nContent-Type: "
                                 b"application/json\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))
            self.transport.doWrite()
            return self.answer

        def dataReceived(self, data: bytes) -> None:
            self.buffer += data
            head, found, rest = self.buffer.partition(b"\r\n\r\n")
            if not found:
                return
            length = int(next(line for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")).split(b":")[1])
            if len(rest) >= length:
                self.buffer = rest[length:]
                self.answer.callback(json.loads(rest[:length]))

    async def run() -> dict[str, float]:
        if kind == "framed":
            client = ContainerClient(reactor, "127.0.0.1", port, SECRET)
            client.connect()

            def once() -> defer.Deferred[Any]:
                return client.request("event", {"event": EVENT}, 5.0)
        else:
            http = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Http())

            def once() -> defer.Deferred[Any]:
                return http.request(json.dumps({"event": EVENT}).encode())
        while kind == "framed" and not client.connected:
            await deferLater(0.01)
        for _ in range(200):  # warm up
            await once()
        times = []
        server_cpu, client_cpu = _cpu_s(server.pid), time.process_time()
        for _ in range(requests):
            start = time.perf_counter()
            await once()
            times.append(time.perf_counter() - start)
        return {"rtt_us": statistics.median(times) * 1e6,
                "p90_us": statistics.quantiles(times, n=10)[-1] * 1e6,
                "client_cpu_us": (time.process_time() - client_cpu) / requests * 1e6,
                "container_cpu_us": (_cpu_s(server.pid) - server_cpu) / requests * 1e6}

    def deferLater(seconds: float) -> defer.Deferred[None]:
        from twisted.internet.task import deferLater as later
        return later(reactor, seconds)

    results: dict[str, float] = {}

    def main() -> None:
        done = defer.ensureDeferred(run())
        done.addCallback(results.update)
        done.addErrback(lambda failure: print(failure, file=sys.stderr))
        done.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(main)
    reactor.run()
    server.terminate()
    server.wait(10)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=4000, help="round trips per run")
    parser.add_argument("--runs", type=int, default=3, help="runs of each transport")
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--measure", metavar="KIND", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return 0
    if args.measure:  # one Twisted reactor per process: each run is its own process
        print(json.dumps(measure(args.measure, args.requests)))
        return 0
    print(f"load average: {os.getloadavg()[0]:.2f} (2 cores, shared)")
    rows: dict[str, list[dict[str, float]]] = {"framed": [], "http": []}
    for run in range(args.runs):
        for kind in (("framed", "http") if run % 2 == 0 else ("http", "framed")):
            out = subprocess.run([sys.executable, __file__, "--measure", kind, "--requests",
                                  str(args.requests)], capture_output=True, text=True, check=True)
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            rows[kind].append(figures)
            print(f"  {kind:<7} rtt {figures['rtt_us']:5.0f} us  p90 {figures['p90_us']:5.0f} us"
                  f"  client cpu {figures['client_cpu_us']:4.0f} us/req"
                  f"  container cpu {figures['container_cpu_us']:4.0f} us/req")
    medians = {kind: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
               for kind, runs in rows.items()}
    for key in ("rtt_us", "client_cpu_us", "container_cpu_us"):
        print(f"framed/http {key}: {medians['framed'][key] / medians['http'][key]:.2f} "
              f"({medians['framed'][key]:.0f} vs {medians['http'][key]:.0f})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
