"""Handling a transaction's items in slices, letting the event loop run between them.

A transaction may hold hundreds of thousands of items (a 1 MiB body of
``{"events": [0, 0, ...]}`` has 500,000). Handled in one go, they would keep
the event loop from every other request, and from the module wire's
decisions, for seconds: the wire hands them over a slice at a time and lets
the loop run between slices. The order is kept: a transaction is handled
under the wire's lock, and its items one after the other.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Final, TypeVar

SLICE: Final = 256
"""Items handled between two turns of the event loop (a few ms of work at most)."""

T = TypeVar("T")


async def in_slices(items: Sequence[T]) -> AsyncIterator[Sequence[T]]:
    """``items`` a slice of :data:`SLICE` at a time, letting the event loop run before each
    slice but the first."""
    for start in range(0, len(items), SLICE):
        if start:
            await asyncio.sleep(0)
        yield items[start:start + SLICE]
