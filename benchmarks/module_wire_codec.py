"""The module wire's JSON codec on the container side: orjson against the stdlib.

Command (from the repository root, after ``scripts/bootstrap``)::

    .venv/bin/python benchmarks/module_wire_codec.py [--runs 5]

Per request the listener decodes one request frame (a message event) and
encodes one answer (an allow, or a modify carrying the new content). Prints
the best time of each over ``--runs`` runs, stdlib (``module_protocol``, what
the Synapse side uses) and orjson (what the container uses), and the ratios.
"""

from __future__ import annotations

import argparse
import timeit

import orjson

from servletkit.wires.module.listener import encode as orjson_encode
from servletkit.wires.module.protocol import decode
from servletkit.wires.module.protocol import encode as stdlib_encode

EVENT = {"event_id": "$abcdefghijklmnopqrstuvwxyz0123456789", "room_id": "!room:localhost",
         "type": "m.room.message", "sender": "@alice:localhost",
         "content": {"msgtype": "m.text", "body": "a message of ordinary length " * 3},
         "origin_server_ts": 1700000000000, "unsigned": {}}
REQUEST = stdlib_encode({"id": 12345, "op": "event", "event": EVENT})[4:]
MODIFY = {"id": 12345, "modify": EVENT["content"]}
ALLOW = {"id": 12345}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--number", type=int, default=100_000)
    args = parser.parse_args()
    cases = {
        "decode request": (lambda: decode(REQUEST), lambda: decode(REQUEST, orjson.loads)),
        "encode allow": (lambda: stdlib_encode(ALLOW), lambda: orjson_encode(ALLOW)),
        "encode modify": (lambda: stdlib_encode(MODIFY), lambda: orjson_encode(MODIFY)),
    }
    print(f"{'':16} {'stdlib us':>10} {'orjson us':>10} {'ratio':>6}")
    for name, (stdlib, fast) in cases.items():
        # interleave the two so load changes on the shared machine hit both
        times: dict[str, list[float]] = {"stdlib": [], "orjson": []}
        for _ in range(args.runs):
            for label, call in (("stdlib", stdlib), ("orjson", fast)):
                times[label].append(timeit.timeit(call, number=args.number) / args.number * 1e6)
        slow_us, fast_us = min(times["stdlib"]), min(times["orjson"])
        print(f"{name:16} {slow_us:10.2f} {fast_us:10.2f} {fast_us / slow_us:6.2f}")


if __name__ == "__main__":
    main()
