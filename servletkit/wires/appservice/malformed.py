"""A transaction's malformed items, logged in summary.

A transaction may hold hundreds of thousands of malformed items (a 1 MiB body
of ``{"events": [0, 0, ...]}`` has 500,000): their problems are logged once per
transaction, with a count and the first few, never once per item.
"""

from __future__ import annotations

import logging
from typing import Final

log = logging.getLogger("servletkit.appservice")

SHOWN: Final = 3
"""Malformed items described in a transaction's summary; the rest are only counted."""


class Malformed:
    """The malformed items of one transaction: counted, the first few described."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.count = 0
        self.first: list[str] = []

    def add(self, index: int, problem: object) -> None:
        """Item ``index`` of the transaction is malformed because of ``problem``."""
        self.count += 1
        if len(self.first) < SHOWN:
            self.first.append(f"item {index}: {problem!s:.200}")

    def log(self, txn_id: str) -> None:
        """One warning for the whole transaction, if anything was malformed (the id
        truncated: a homeserver chooses it)."""
        if self.count:
            log.warning("transaction %.64s: skipped %d malformed %s (%s%s)", txn_id,
                        self.count, self.what, "; ".join(self.first),
                        "; ..." if self.count > len(self.first) else "")
