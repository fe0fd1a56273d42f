"""Large transactions are handled in slices: other requests are answered meanwhile."""

from __future__ import annotations

import asyncio
import logging
import time

import orjson

from tests.appservice.serving import served
from tests.appservice.support import AUTH, Counts, new_event


async def test_a_large_transaction_lets_other_requests_through(make_wire, caplog):
    """While a 1 MiB transaction of 500,000 malformed items and 2,000 events is handled,
    health requests are still answered, each within 2 s (the body is parsed and its
    digest computed in one go: about 0.1 s; the slowest is 0.1 to 0.6 s on the shared 2-core
    machine, against 50 s before slicing)."""
    plugin = Counts()
    container, _ = await make_wire({"counts": plugin})
    body = orjson.dumps({"events": [0] * 500_000 + [new_event() for _ in range(2_000)]})
    assert len(body) > 1024 * 1024
    caplog.set_level(logging.WARNING, logger="servletkit.appservice")
    async with served(container) as client:
        started = time.monotonic()
        put = asyncio.create_task(client.put("/_matrix/app/v1/transactions/big", content=body,
                                             headers=AUTH))
        waits = []
        while not put.done() and len(waits) < 10_000:
            asked = time.monotonic()
            assert (await client.get("/_servletkit/health")).status_code == 200
            waits.append(time.monotonic() - asked)
            await asyncio.sleep(0.005)
        answer = await put
        took = time.monotonic() - started
    print(f"transaction {took:.2f} s; {len(waits)} health requests meanwhile, the slowest "
          f"{max(waits, default=0) * 1000:.0f} ms")
    assert answer.status_code == 200
    assert (plugin.intercepted, plugin.stored) == (2_000, 2_000)
    assert len(waits) >= 3 and max(waits) < 2.0
