"""Instructions per appservice transaction, free of the shared machine's noise.

Run (needs valgrind: ``apt-get install -y valgrind``)::

    .venv/bin/python benchmarks/appservice_instructions.py            # both kinds, ~5 min
    .venv/bin/python benchmarks/appservice_instructions.py --kinds servletkit

It drives the container's ASGI app exactly as ``appservice_throughput.py`` builds it
(``servletkit``: one no-op ``on_stored_event`` plugin; ``servletkit-idle``: a plugin with
no event hook), in-process on uvloop, without uvicorn: the same 100-event transaction
``PUT`` one at a time under fresh ids. Under valgrind's cachegrind it counts the
instructions of a run of ``--few`` transactions and of ``--few + --extra``; the
difference divided by ``--extra`` is the cost of one transaction (start-up and imports
cancel out). On the 2-core machine wall-clock ratios swing 4x with the load; these do not.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from appservice_throughput import HS_TOKEN, PREFIX, servletkit_app, transaction_body

KINDS = {"servletkit": True, "servletkit-idle": False}


async def drive(app: Any, count: int) -> None:
    """Start the app's lifespan, PUT ``count`` transactions one at a time, stop it."""
    body = transaction_body()
    headers = [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {HS_TOKEN}".encode()),
               (b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    lifespan = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}},
                                         events.get, answers.put))
    await events.put({"type": "lifespan.startup"})
    assert (await answers.get())["type"] == "lifespan.startup.complete"
    for n in range(count):
        path = f"{PREFIX}instructions-{n}"
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "PUT", "scheme": "http", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "root_path": "", "headers": headers,
                 "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1)}
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        status: list[int] = []

        async def receive(messages: list[dict[str, Any]] = messages) -> dict[str, Any]:
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any], status: list[int] = status) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(scope, receive, send)
        if status != [200]:
            raise SystemExit(f"transaction {n} answered {status}")
    await events.put({"type": "lifespan.shutdown"})
    await answers.get()
    await lifespan


def run_one(kind: str, count: int) -> None:
    import uvloop

    with tempfile.TemporaryDirectory() as tmp:
        app = servletkit_app(Path(tmp), str(Path(tmp) / "bench.db"), event_hooks=KINDS[kind])
        uvloop.run(drive(app, count))


def instructions(kind: str, count: int) -> int:
    """cachegrind's instruction count of a whole run of ``count`` transactions."""
    output = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
         sys.executable, __file__, "drive", kind, str(count)],
        capture_output=True, text=True, check=True, timeout=900,
    ).stderr
    return int(re.search(r"I\s+refs:\s+([\d,]+)", output).group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS))
    parser.add_argument("--few", type=int, default=10, help="transactions of the short run")
    parser.add_argument("--extra", type=int, default=200,
                        help="transactions the long run adds (at most 2,000)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: apt-get install -y valgrind")
    extra = max(1, min(args.extra, 2_000))
    for kind in args.kinds:
        short = instructions(kind, args.few)
        long = instructions(kind, args.few + extra)
        print(f"{kind:<16} {(long - short) / extra / 1e6:6.3f} M instructions per "
              f"{len(transaction_body()):,}-byte, 100-event transaction")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "drive":
        run_one(sys.argv[2], int(sys.argv[3]))
    else:
        main()
