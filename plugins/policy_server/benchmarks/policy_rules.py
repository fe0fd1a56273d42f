"""Decision cost per event of the policy_server plugin with 10 / 1,000 / 100,000 list entries.

Run: ``.venv/bin/python plugins/policy_server/benchmarks/policy_rules.py``. Each
size holds exact user bans, user globs (``@spam123*:*``, ``*:evil123.example``)
and server globs (``*.bad123.example``), a third each; the events are from senders
that match nothing (the common case, the whole index is consulted) and from a
banned glob (a refusal: logged, and written to the audit log in the store). A no-rule
baseline (the plugin with an empty index) runs in the same
process. Measured: the plugin's ``on_send_event`` called directly, and the same
through the real dispatcher.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from servletkit_policy_server import PolicyServer

from servletkit import PluginContext
from servletkit.store import PluginStore
from servletkit.testing import make_event, running_container

LIST = "!list:bench"


def entries(count: int) -> list[dict[str, Any]]:
    """``count`` ban rule events: exact users, user globs and server globs."""
    events = []
    for i in range(count):
        kind, entity = [("user", f"@troll{i}:example.org"), ("user", f"@spam{i}*:*"),
                        ("server", f"*.bad{i}.example")][i % 3]
        if i % 6 == 4:
            kind, entity = "user", f"*:evil{i}.example"
        events.append({"type": f"m.policy.rule.{kind}", "state_key": f"r{i}",
                       "content": {"entity": entity, "recommendation": "m.ban"}})
    return events


class Lists:
    """A homeserver stand-in serving one list room."""

    def __init__(self, state: list[dict[str, Any]]) -> None:
        self.state = state

    async def join(self, room: str) -> str:
        return LIST

    async def get_room_state(self, room_id: str) -> list[dict[str, Any]]:
        return self.state


async def measure(count: int | None, rounds: int = 20000) -> tuple[float, float, float]:
    """µs per decision: direct (clean sender), direct (banned glob), via the dispatcher."""
    table: dict[str, Any] = {"policy_lists": [LIST]} if count is not None else {}
    plugin = PolicyServer(homeserver=Lists(entries(count or 0)))
    config = {"plugins": {"policy_server": table}}
    async with running_container({"policy_server": plugin}, config) as container:
        clean = [make_event("hello", sender=f"@user{i}:server{i % 50}.org") for i in range(100)]
        banned = make_event("hello", sender="@spam7x:anywhere.org")
        ctx = PluginContext("policy_server", {}, logging.getLogger("bench"),
                            store=PluginStore(container.store, "policy_server"))
        start = time.perf_counter()
        for i in range(rounds):
            await plugin.on_send_event(clean[i % 100], ctx)
        direct = (time.perf_counter() - start) / rounds * 1e6
        start = time.perf_counter()
        for _ in range(rounds // 10):
            await plugin.on_send_event(banned, ctx)
        direct_banned = (time.perf_counter() - start) / (rounds // 10) * 1e6
        start = time.perf_counter()
        for i in range(rounds):
            await container.dispatcher.intercept("on_send_event", clean[i % 100])
        dispatched = (time.perf_counter() - start) / rounds * 1e6
    return direct, direct_banned, dispatched


async def main() -> None:
    """Print one line per size, the baseline first."""
    logging.disable(logging.INFO)
    print(f"{'entries':>10} {'direct µs':>10} {'banned µs':>10} {'dispatcher µs':>14}")
    for count in (None, 10, 1000, 100_000):
        direct, banned, dispatched = await measure(count)
        label = "baseline" if count is None else f"{count:,}"
        print(f"{label:>10} {direct:10.2f} {banned:10.2f} {dispatched:14.2f}")


if __name__ == "__main__":
    asyncio.run(main())
