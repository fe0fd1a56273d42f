"""The plugin authors' test kit: a container per test, with data of its own."""

from __future__ import annotations

from typing import Any

import pytest

from servletkit import Veto, hookimpl
from servletkit.testing import make_event, running_container


class Counter:
    """Counts the events it sees in its own durable store."""

    @hookimpl
    async def on_send_event(self, event: Any, context: Any) -> None:
        await context.store.put("seen", await context.store.get("seen", 0) + 1)


async def count_once() -> int:
    plugin = Counter()
    async with running_container({"counter": plugin}) as container:
        await container.dispatcher.intercept("on_send_event", make_event("hi"))
        return await container.store.get("counter", "seen")  # type: ignore[return-value]


async def test_each_container_has_its_own_store() -> None:
    """Two tests in a row both start from an empty store."""
    assert [await count_once(), await count_once()] == ["1", "1"]


async def test_a_plugin_that_fails_to_init_fails_the_test() -> None:
    class Broken:
        @hookimpl
        def servlet_init(self) -> None:
            raise RuntimeError("no database")

        @hookimpl
        def on_send_event(self) -> Veto:
            return Veto("never")

    with pytest.raises(RuntimeError, match="'broken' failed to init"):
        async with running_container({"broken": Broken()}):
            pass
