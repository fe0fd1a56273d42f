"""What the module wire adds to the latency a Matrix client sees, against synapse-http-antispam.

Command (from the repository root, after ``scripts/bootstrap``)::

    .venv/bin/python benchmarks/module_wire_latency.py [--rounds 1500] [--join-rounds 300]
        [--max-seconds 480]

Four real Synapse 1.163.2 processes run at once, the same config but for ``modules:``:

* ``none``: no module (the baseline);
* ``inprocess``: ``benchmarks/noop_synapse_module.py``, the same callbacks registered
  and answered in-process (the floor: what the callbacks cost Synapse by themselves);
* ``servletkit``: ``servletkit.synapse.ServletkitModule`` connected to a servletkit
  container (its own process) running one no-op plugin that implements every
  interception hook and returns ``None``;
* ``antispam``: ``synapse-http-antispam`` 0.5.1 (PyPI) with ``enabled_callbacks:
  [check_event_for_spam, user_may_join_room]`` (without it Synapse 1.163.2 refuses
  to start), pointed at a no-op endpoint (a bare ASGI app on uvicorn, its own process,
  answering ``200 {}``).

One client sends to each Synapse in turn, one request in flight, and rotates the
starting configuration every round (one Synapse process differs from the next by
about +-1 ms, so the configurations are interleaved, never run one after another).
It measures ``PUT /rooms/{room}/send/m.room.message`` and ``POST /join/{room}``
(each join is followed by an unmeasured leave). Rounds are bounded in count and
time; the first ``--warmup`` rounds are discarded.

It prints, per configuration, the median, p90 and the median *added* latency
against ``none`` (difference of medians, and the median of round-wise differences),
and the ratio servletkit added / antispam added. Target (issue 17): servletkit adds at
most 0.2x what antispam adds to the median message send, and at most 0.2 ms more than
inprocess (sends get three quarters of ``--max-seconds``, joins the rest). The machine
(2 cores, shared) is noisy: the load average before and after is printed; repeat and compare ratios.

``--serve-container`` and ``--serve-noop`` are the helper processes' entry points.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from servletkit import hookimpl
from servletkit.testing.synapse import SynapseServer, free_port, start_synapse

SECRET = "benchmark-module-wire-secret"
CONFIGS = ("none", "inprocess", "servletkit", "antispam")


# -- helper processes -----------------------------------------------------------------


class NoopPlugin:
    """Implements every interception hook and has no opinion."""

    @hookimpl
    def on_send_event(self, event: Any) -> None:
        """No opinion."""

    @hookimpl
    def on_join_room(self, user_id: str, room_id: str) -> None:
        """No opinion."""

    @hookimpl
    def on_invite(self, inviter_id: str, invitee_id: str, room_id: str) -> None:
        """No opinion."""

    @hookimpl
    def on_create_room(self, user_id: str, request: Any) -> None:
        """No opinion."""

    @hookimpl
    def on_connect_event_stream(self, user_id: str, device_id: str | None) -> None:
        """No opinion."""


def serve_container(module_port: int) -> None:
    """The servletkit container: uvicorn + the app, module wire on ``module_port``."""
    import uvicorn

    from servletkit.container.app import build_app
    from servletkit.container.config import parse_config
    from servletkit.container.plugins import PluginSource, installed_plugins
    from servletkit.container.runtime import Container
    config = parse_config({
        "module": {"enabled": True, "port": module_port, "secret": SECRET},
        "plugins": {name: {"enabled": False} for name in installed_plugins()},
    })
    container = Container(config, [PluginSource("noop", obj=NoopPlugin())])
    container.load()
    uvicorn.run(build_app(container), host="127.0.0.1", port=free_port(), log_level="warning",
                lifespan="on")


def serve_noop(port: int) -> None:
    """The no-op endpoint synapse-http-antispam posts to: ``200 {}`` for every request."""
    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                access_log=False)


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, *args])


def _wait_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


# -- the client ---------------------------------------------------------------------


class Client:
    """One configuration: its Synapse, a sender with a room, a joiner."""

    def __init__(self, server: SynapseServer) -> None:
        self.server = server
        self.sender = self._user()
        self.joiner = self._user()
        response = self.sender.post("/createRoom", json={"preset": "public_chat"})
        response.raise_for_status()
        self.room = response.json()["room_id"]

    def _user(self) -> httpx.Client:
        token = self.server.register(f"b{uuid.uuid4().hex[:10]}")["access_token"]
        return httpx.Client(base_url=f"{self.server.url}/_matrix/client/v3", timeout=30,
                            headers={"Authorization": f"Bearer {token}"})

    def send(self) -> float:
        start = time.perf_counter()
        response = self.sender.put(f"/rooms/{self.room}/send/m.room.message/{uuid.uuid4().hex}",
                                   json={"msgtype": "m.text", "body": "hello"})
        elapsed = time.perf_counter() - start
        response.raise_for_status()
        return elapsed

    def join(self) -> float:
        start = time.perf_counter()
        response = self.joiner.post(f"/join/{self.room}", json={})
        elapsed = time.perf_counter() - start
        response.raise_for_status()
        self.joiner.post(f"/rooms/{self.room}/leave", json={}).raise_for_status()
        return elapsed

    def close(self) -> None:
        self.sender.close()
        self.joiner.close()


def interleave(clients: dict[str, Client], action: str, rounds: int, warmup: int,
               deadline: float) -> dict[str, list[float]]:
    """Run ``action`` on each client in turn, rotating the start; seconds per request."""
    names = list(clients)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds + warmup):
        if time.monotonic() > deadline:
            break
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed = getattr(clients[name], action)()
            if index >= warmup:
                samples[name].append(elapsed)
    return samples


def report(title: str, samples: dict[str, list[float]]) -> dict[str, Any]:
    """Print medians, p90, added latency against ``none`` and the servletkit/antispam ratio."""
    count = min(len(values) for values in samples.values())
    print(f"\n{title}: {count} interleaved rounds")
    if count < 2:
        print("  too few rounds in the time bound (raise --max-seconds)")
        return {"rounds": count, "added_ms": {}, "ratio": float("nan"),
                "above_inprocess_ms": float("nan")}
    base = statistics.median(samples["none"])
    print(f"  {'config':<11} {'median':>9} {'p90':>9} {'added':>9} {'added (paired)':>15}")
    added: dict[str, float] = {}
    for name, values in samples.items():
        median = statistics.median(values)
        p90 = statistics.quantiles(values, n=10)[-1]
        paired = statistics.median(v - b for v, b in zip(values, samples["none"], strict=True))
        added[name] = median - base
        print(f"  {name:<11} {median * 1e3:8.2f}ms {p90 * 1e3:8.2f}ms "
              f"{added[name] * 1e3:+8.2f}ms {paired * 1e3:+14.2f}ms")
    ratio = added["servletkit"] / added["antispam"] if added["antispam"] > 0 else float("nan")
    above = (added["servletkit"] - added["inprocess"]) * 1e3
    print(f"  servletkit added / antispam added (medians): {ratio:.2f}; servletkit above "
          f"inprocess: {above:+.2f} ms")
    return {"rounds": count, "added_ms": {k: v * 1e3 for k, v in added.items()},
            "ratio": ratio, "above_inprocess_ms": above}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=1500, help="measured message rounds")
    parser.add_argument("--join-rounds", type=int, default=300, help="measured join rounds")
    parser.add_argument("--warmup", type=int, default=30, help="discarded rounds, each kind")
    parser.add_argument("--max-seconds", type=float, default=480, help="time bound, whole run")
    parser.add_argument("--serve-container", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-noop", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_container:
        serve_container(args.serve_container)
        return 0
    if args.serve_noop:
        serve_noop(args.serve_noop)
        return 0

    deadline = time.monotonic() + args.max_seconds
    module_port, noop_port = free_port(), free_port()
    helpers = [_spawn("--serve-container", str(module_port)),
               _spawn("--serve-noop", str(noop_port))]
    servers: dict[str, SynapseServer] = {}
    clients: dict[str, Client] = {}
    try:
        _wait_port(module_port)
        _wait_port(noop_port)
        modules: dict[str, list[dict[str, Any]]] = {
            "none": [],
            "inprocess": [{"module": "noop_synapse_module.NoopModule", "config": {}}],
            "servletkit": [{"module": "servletkit.synapse.ServletkitModule",
                            "config": {"port": module_port, "secret": SECRET}}],
            "antispam": [{"module": "synapse_http_antispam.HTTPAntispam",
                          "config": {"base_url": f"http://127.0.0.1:{noop_port}",
                                     "enabled_callbacks": ["check_event_for_spam",
                                                           "user_may_join_room"]}}],
        }
        with tempfile.TemporaryDirectory(prefix="module-wire-bench-") as root, \
                ThreadPoolExecutor(len(CONFIGS)) as pool:
            futures = {name: pool.submit(start_synapse, Path(root, name), modules=modules[name],
                                         pythonpath=[Path(__file__).parent])
                       for name in CONFIGS}
            servers = {name: future.result() for name, future in futures.items()}
            clients = {name: Client(servers[name]) for name in CONFIGS}
            load_before = os.getloadavg()
            print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} "
                  f"(2 cores, shared with other work)")
            # sends get three quarters of the time left, so joins are measured too
            sends_until = time.monotonic() + 0.75 * (deadline - time.monotonic())
            sends = interleave(clients, "send", args.rounds, args.warmup, sends_until)
            joins = interleave(clients, "join", args.join_rounds, args.warmup, deadline)
            load_after = os.getloadavg()
            results = {"send": report("message send (PUT /send)", sends),
                       "join": report("join (POST /join)", joins)}
            print(f"\nload average after: {load_after[0]:.2f} {load_after[1]:.2f}")
            ratio, above = results["send"]["ratio"], results["send"]["above_inprocess_ms"]
            verdict = "MET" if ratio <= 0.2 and above <= 0.2 else "NOT MET"
            print(f"target (issue 17): servletkit adds <= 0.2x what synapse-http-antispam "
                  f"adds to the median send and <= 0.2 ms above inprocess: {ratio:.2f}x, "
                  f"{above:+.2f} ms -> {verdict}")
            print(json.dumps(results))
    finally:
        for client in clients.values():
            client.close()
        for server in servers.values():
            server.stop()
        for helper in helpers:
            helper.terminate()
            helper.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
