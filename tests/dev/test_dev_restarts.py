"""A bot that counts messages keeps counting across `servletkit dev` restarts.

Each restart also restarts the embedded Synapse, which (on SQLite) numbers its
appservice transactions from 1 again: the container must take those for new
transactions, not retries, or the bot goes deaf after the first Ctrl-C.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from servletkit.store import PluginStore, SqliteStore
from servletkit.testing import plugin_site, python_path_env
from servletkit.testing.dev import DevProcess
from tests.dev.test_dev_command import START_TIMEOUT_S, STOP_TIMEOUT_S, Client, write_config

pytestmark = pytest.mark.integration

COUNTER = """
from servletkit import hookimpl


@hookimpl
async def on_stored_event(event, context):
    if event.type == "m.room.message":
        key = f"seen/{event.event_id}"
        await context.store.put(key, await context.store.get(key, 0) + 1)
"""


def counts(state: Path) -> dict[str, int]:
    """What the counter bot has durably stored: event id → times observed."""
    return asyncio.run(_counts(state))


async def _counts(state: Path) -> dict[str, int]:
    store = SqliteStore(state / "servletkit.db")
    try:
        return {key.removeprefix("seen/"): value
                for key, value in await PluginStore(store, "counter").items("seen/")}
    finally:
        await store.close()


def wait_for(check: Callable[[], Any], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {within:g} s")
        time.sleep(0.05)


def test_a_counting_bot_counts_every_message_once_across_restarts(tmp_path: Path) -> None:
    """Three lives of `servletkit dev` on one state folder: each message counted exactly once."""
    site = plugin_site(tmp_path, "counter", COUNTER)
    config = write_config(tmp_path / "project")
    state = tmp_path / "project" / "state"
    room_id = None
    sent: list[str] = []
    for life in range(3):
        run = DevProcess.launch(config, env=python_path_env(site))
        try:
            run.wait_ready(START_TIMEOUT_S)
            client = Client(run.facts)
            try:
                if room_id is None:
                    room_id = client.http.post("/_matrix/client/v3/createRoom",
                                               json={}).json()["room_id"]
                for n in range(3):
                    response = client.send(room_id, f"life {life} message {n}")
                    assert response.status_code == 200, response.text
                    sent.append(response.json()["event_id"])
            finally:
                client.close()
            wait_for(lambda: set(sent) <= counts(state).keys())
        finally:
            assert run.stop(STOP_TIMEOUT_S) == 0, run.stderr
    assert counts(state) == dict.fromkeys(sent, 1)
