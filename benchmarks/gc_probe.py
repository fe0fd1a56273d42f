"""Runs ``servletkit`` with its garbage-collector pauses recorded, for the benchmarks.

Command (what a benchmark starts instead of ``python -m servletkit.container.cli``)::

    python benchmarks/gc_probe.py OUT run --config PATH

Every collection's generation, duration and end (``time.time()``) is appended to
``OUT`` as it happens, a line each (``servletkit run`` ends by its signal, so nothing
can be written at exit): a benchmark's latency tail can then be compared with the
container's own pauses (a full collection holds the event loop for as long as it takes
to walk every tracked object).
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path
from typing import Any


def main() -> int:
    out = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115 (open while the process lives)
    started = [0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            out.write(f"{info['generation']} {time.perf_counter() - started[0]:.6f} "
                      f"{time.time():.6f}\n")

    gc.callbacks.append(timed)
    from servletkit.container.cli import main as servletkit

    return servletkit(sys.argv[2:])


class Recorder:
    """The same record for this process, while in the ``with`` block, kept in memory:
    :attr:`pauses` as ``(generation, seconds, ended)``."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float, float]] = []
        self._started = 0.0

    def __enter__(self) -> Recorder:
        gc.callbacks.append(self._timed)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._timed)

    def _timed(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._started,
                                time.time()))


def read(path: Path) -> list[tuple[int, float, float]]:
    """The pauses ``main`` recorded in ``path``."""
    return [(int(gen), float(seconds), float(ended))
            for gen, seconds, ended in (line.split() for line in path.read_text().splitlines())]


def summary(pauses: list[tuple[int, float, float]], start: float = 0.0,
            end: float = float("inf")) -> str:
    """One line on the ``pauses`` that ended between ``start`` and ``end``
    (``time.time()``): per generation, how many, the longest and their total."""
    parts = []
    for generation in (0, 1, 2):
        took = [seconds for gen, seconds, ended in pauses
                if gen == generation and start <= ended <= end]
        if took:
            parts.append(f"gen {generation}: {len(took)}, longest {max(took) * 1e3:.1f} ms, "
                         f"total {sum(took) * 1e3:.0f} ms")
    return "; ".join(parts) or "none"


if __name__ == "__main__":
    sys.exit(main())
