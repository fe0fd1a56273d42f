"""A rate limit for repeated reports: one line per key every few seconds, with a count.

A failure that repeats on every event (a broken plugin, an unreachable
container) would otherwise fill a terminal or a log. Both sides of the module
wire use it, so it needs nothing but the standard library and attrs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable

import attrs


@attrs.define
class Throttle:
    """Lets one report per key through every ``interval_s`` seconds; counts the others."""

    interval_s: float
    clock: Callable[[], float] = time.monotonic
    _last: dict[Hashable, tuple[float, int]] = attrs.field(factory=dict, init=False)

    def allow(self, key: Hashable) -> int | None:
        """Whether a report for ``key`` may go out now.

        Returns ``None`` if it must be held back (it is counted), else how many
        reports for ``key`` were held back since the last one that went out.
        """
        now = self.clock()
        last, held_back = self._last.get(key, (-math.inf, 0))
        if now - last < self.interval_s:
            self._last[key] = (last, held_back + 1)
            return None
        self._last[key] = (now, 0)
        return held_back
