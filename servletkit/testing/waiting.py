"""Waiting in tests for something that happens elsewhere (a homeserver, a bridge)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


async def eventually(check: Callable[[], Any], within: float = 15.0,
                     interval: float = 0.05) -> Any:
    """Poll ``check()`` (sync or async) until it returns something truthy, for ``within``
    seconds; return that, or raise ``AssertionError`` with the last result."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"still {result!r} after {within:g} s")
        await asyncio.sleep(interval)
