"""Hostile inputs against a container's wires, counted: what docs/reliability.md reports.

    .venv/bin/python benchmarks/hostile_inputs.py [--seed N] [--cases N]

Starts one container (appservice and module wires, a vetoing plugin) served by
uvicorn on 127.0.0.1 with the settings of ``servletkit run``, throws each kind
of hostile input at it (random but seeded), and prints a Markdown table: the
input, how many cases, what came back (status and errcode, or what the module
wire did), and whether anything went wrong (a 5xx, a hang, a redirect, a
connection not refused). Exits 1 if anything did. About two minutes, mostly waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import os
import random
import resource
import socket
import string
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from servletkit import Veto, hookimpl
from servletkit.container.app import build_app
from servletkit.container.config import parse_config
from servletkit.container.plugins import PluginSource
from servletkit.container.runtime import Container
from servletkit.testing import only_plugins
from servletkit.wires.http import with_header_timeout
from servletkit.wires.module.protocol import HEADER, PROTOCOL_VERSION, decode, encode

HS_TOKEN = "probe-hs-token"
SECRET = "probe-module-secret"
AUTH = {"Authorization": f"Bearer {HS_TOKEN}"}
Row = tuple[str, int, str, bool]


class Vetoes:
    @hookimpl
    def on_send_event(self, event: Any) -> Any:
        return Veto("no") if event.content.get("body") == "bad" else None

    @hookimpl
    def on_query_alias(self, alias: str) -> bool:
        return alias.startswith("#_p_")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summary(counter: collections.Counter[str]) -> str:
    return ", ".join(f"{key} x{count}" for key, count in counter.most_common())


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False, 0, -1, 2**63, 1.5, 1e308])
    if kind == 2:
        return "".join(rng.choice(string.printable + "\u0000\u00e9\u2603")
                       for _ in range(rng.randrange(20)))
    if kind in (3, 4):
        return rng.choice(["events", "ephemeral", "to_device", "event_id", "content"])
    if kind == 5:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["events", "ephemeral", "de.sorunome.msc2409.to_device", "type", "content",
            "event_id", "room_id", "sender", "presence"]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


async def http_probes(client: httpx.AsyncClient, rng: random.Random, cases: int) -> list[Row]:
    rows: list[Row] = []

    async def run(name: str, requests: list[tuple[str, str, dict[str, Any]]]) -> None:
        seen: collections.Counter[str] = collections.Counter()
        bad = False
        for method, path, kwargs in requests:
            try:
                answer = await asyncio.wait_for(client.request(method, path, **kwargs), 10)
            except TimeoutError:
                seen["hang"] += 1
                bad = True
                continue
            errcode = ""
            if answer.headers.get("content-type", "").startswith("application/json"):
                body = answer.json()
                errcode = body.get("errcode", "") if isinstance(body, dict) else ""
            seen[f"{answer.status_code} {errcode}".strip()] += 1
            bad |= answer.status_code >= 500 or 300 <= answer.status_code < 400
            bad |= answer.status_code >= 400 and not errcode
        rows.append((name, len(requests), summary(seen), bad))

    txn = "/_matrix/app/v1/transactions/"
    await run("transaction body: random bytes", [
        ("PUT", f"{txn}b{i}", {"content": rng.randbytes(rng.randrange(200)), "headers": AUTH})
        for i in range(cases)])
    await run("transaction body: random JSON shapes", [
        ("PUT", f"{txn}j{i}", {"content": orjson.dumps(random_json(rng)), "headers": AUTH})
        for i in range(cases)])
    await run("transaction: random items in events/ephemeral", [
        ("PUT", f"{txn}i{i}", {"json": {"events": [random_json(rng) for _ in range(5)],
                                        "ephemeral": [random_json(rng) for _ in range(5)]},
                               "headers": AUTH}) for i in range(cases)])
    tokens = [{}, {"headers": {"Authorization": "Bearer wrong"}},
              {"headers": {"Authorization": HS_TOKEN}}, {"params": {"access_token": "wrong"}},
              {"headers": AUTH, "params": {"access_token": "other"}}]
    paths = [("PUT", f"{txn}t"), ("GET", "/_matrix/app/v1/users/@a:x"),
             ("GET", "/_matrix/app/v1/rooms/%23a:x"), ("POST", "/_matrix/app/v1/ping"),
             ("GET", "/_matrix/app/v1/thirdparty/protocol/p")]
    await run("missing, wrong or mismatched token", [
        (method, path, {**rng.choice(tokens), "json": {"events": []}})
        for method, path in (rng.choice(paths) for _ in range(cases))])
    idents = []
    for _ in range(cases):
        local = "".join(rng.choice(string.ascii_lowercase + "/%._=-+ #?") for _ in range(8))
        ident = rng.choice(["#_p_", "#", "@"]) + local + ":x" + rng.choice(["", "/", "//"])
        kind = "rooms" if ident[0] == "#" else "users"
        idents.append(("GET", f"/_matrix/app/v1/{kind}/{quote(ident, safe=rng.choice(['', '/']))}",
                       {"headers": AUTH}))
    await run("user IDs and aliases with '/', '%', '?', '#'", idents)
    await run("oversized body (Content-Length over the limit)", [
        ("PUT", f"{txn}big{i}", {"content": b"x" * (3 * 1024 * 1024), "headers": AUTH})
        for i in range(5)])
    return rows


async def big_transaction(client: httpx.AsyncClient) -> Row:
    body = orjson.dumps({"events": [0] * 500_000})
    put = asyncio.create_task(client.put("/_matrix/app/v1/transactions/huge", content=body,
                                         headers=AUTH))
    started = time.monotonic()
    waits = []
    while not put.done():
        asked = time.monotonic()
        await client.get("/_servletkit/health")
        waits.append(time.monotonic() - asked)
        await asyncio.sleep(0.005)
    status = (await put).status_code
    took = time.monotonic() - started
    return ("1 MiB transaction of 500,000 malformed items", 1,
            f"{status} in {took:.2f} s; {len(waits)} health requests meanwhile, slowest "
            f"{max(waits) * 1000:.0f} ms", status != 200 or max(waits) > 0.5)


async def module_probes(port: int, rng: random.Random, cases: int) -> list[Row]:
    rows: list[Row] = []

    async def exchange(data: bytes, end: bool = False) -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(data)
            if end:  # then nothing more: what it did with an incomplete frame shows
                writer.write_eof()
            await writer.drain()
            header = await asyncio.wait_for(reader.readexactly(HEADER.size), 5)
            (length,) = HEADER.unpack(header)
            answer = decode(await asyncio.wait_for(reader.readexactly(length), 5))
            closed = await asyncio.wait_for(reader.read(), 5) == b""
            error = answer.get("error", {})
            return f"{error.get('errcode', 'hello')}{', closed' if closed else ''}"
        except asyncio.IncompleteReadError:
            return "closed"
        except TimeoutError:
            return "no answer in 5 s"
        finally:
            writer.close()

    seen: collections.Counter[str] = collections.Counter()
    for _ in range(cases):
        seen[await exchange(rng.randbytes(rng.randrange(1, 64)), end=True)] += 1
    rows.append(("module wire: random bytes before the hello", cases, summary(seen),
                 "no answer in 5 s" in seen))
    seen = collections.Counter()
    for length in [4097, 65536, 8 * 1024 * 1024, 2**32 - 1] * (cases // 40):
        seen[await exchange(HEADER.pack(length) + b"{")] += 1
    rows.append(("module wire: a long frame announced before the hello", sum(seen.values()),
                 summary(seen), set(seen) != {"M_TOO_LARGE, closed"}))
    seen = collections.Counter()
    hellos = [True, 1.0, "1", [1], None, 2, 0]
    for protocol in hellos * (cases // 70):
        seen[await exchange(encode({"op": "hello", "protocol": protocol, "secret": SECRET}))] += 1
    rows.append(("module wire: hello with a protocol that is not the integer 1",
                 sum(seen.values()), summary(seen), set(seen) != {"M_UNRECOGNIZED, closed"}))
    seen = collections.Counter()
    for secret in [None, "", "x", SECRET + "x", SECRET[:-1], 1] * (cases // 60):
        seen[await exchange(encode({"op": "hello", "protocol": PROTOCOL_VERSION,
                                    "secret": secret}))] += 1
    rows.append(("module wire: wrong secrets", sum(seen.values()), summary(seen),
                 set(seen) != {"M_FORBIDDEN, closed"}))
    # 60 connections (under max_connections) each announcing an 8 MiB frame before the
    # hello and sending 1 MiB of it: the 100 sockets took 80 → 781 MB
    before = rss_mb()
    chunk = HEADER.pack(8 * 1024 * 1024) + bytes(1024 * 1024)
    answers: collections.Counter[str] = collections.Counter()
    streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(60)]
    for _, writer in streams:
        writer.write(chunk)
    for reader, writer in streams:
        data = b""
        with contextlib.suppress(ConnectionError):  # reset: it closed with data unread
            await asyncio.wait_for(writer.drain(), 5)
            data = await asyncio.wait_for(reader.read(4096), 5)
        answers["M_TOO_LARGE" if b"M_TOO_LARGE" in data else "reset"] += 1
        writer.close()
    rows.append(("module wire: 8 MiB frames announced before the hello, 1 MiB sent each", 60,
                 f"{summary(answers)}; max RSS {before:.0f} → {rss_mb():.0f} MB",
                 not set(answers) <= {"M_TOO_LARGE", "reset"}))
    # connections: 200 opened at once, none says hello
    before = rss_mb()
    opened = [await asyncio.open_connection("127.0.0.1", port) for _ in range(200)]
    await asyncio.sleep(0.2)
    refused = 0
    for reader, _ in opened:
        try:
            data = await asyncio.wait_for(reader.read(4096), 0.05)
            refused += b"M_LIMIT_EXCEEDED" in data
        except TimeoutError:
            pass
    for _, writer in opened:
        writer.close()
    rows.append(("module wire: 200 connections without a hello", 200,
                 f"{refused} refused with M_LIMIT_EXCEEDED (max_connections 64); max RSS "
                 f"{before:.0f} → {rss_mb():.0f} MB", refused != 136))
    return rows


async def main(seed: int, cases: int) -> int:
    logging.basicConfig(level=logging.ERROR)  # the refusals' warnings are expected
    rng = random.Random(seed)
    folder = Path(tempfile.mkdtemp(prefix="servletkit-hostile-"))
    module_port = free_port()
    config = parse_config({
        "server": {"metrics": True},
        "store": {"path": str(folder / "s.db")},
        "appservice": {"as_token": "probe-as", "hs_token": HS_TOKEN,
                       "max_transaction_bytes": 2 * 1024 * 1024, "body_timeout_s": 2.0},
        "module": {"enabled": True, "port": module_port, "secret": SECRET},
        "plugins": only_plugins({"vetoes": {}}),
    }, folder / "servletkit.toml")
    container = Container(config, [PluginSource("vetoes", obj=Vetoes())])
    container.load()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(
        build_app(container), lifespan="on", log_level="critical", access_log=False,
        http=with_header_timeout(AutoHTTPProtocol, 2.0)))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(1000):
        if server.started:
            break
        await asyncio.sleep(0.01)
    await container.ready.wait()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    rows: list[Row] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        rows += await http_probes(client, rng, cases)
        rows.append(await big_transaction(client))
    rows += await module_probes(module_port, rng, cases)
    server.should_exit = True
    await task
    print(f"seed {seed}, {cases} cases per random kind, pid {os.getpid()}\n")
    print("| input | cases | answers | wrong |\n|---|---|---|---|")
    for name, count, answers, bad in rows:
        print(f"| {name} | {count} | {answers} | {'**yes**' if bad else 'no'} |")
    return 1 if any(bad for *_, bad in rows) else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--cases", type=int, default=500)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.seed, args.cases)))
