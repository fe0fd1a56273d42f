"""How long ``servletkit dev`` takes to be ready: cold (empty state) and warm starts.

Run::

    .venv/bin/python benchmarks/dev_start.py              # 3 runs of each
    .venv/bin/python benchmarks/dev_start.py --runs 5

"Ready" is the moment ``dev.json`` appears: the container and its plugins are
up, Synapse answers, the test account exists and has logged in through the
module wire, and Synapse has pinged the appservice. Each run starts
``servletkit dev`` as a subprocess (Python start-up included), waits for
ready, then SIGTERMs it and times the stop as well.

* **cold**: a fresh state folder each run (Synapse creates its database and
  signing key, the test account is registered);
* **warm**: the same state folder again (what a user sees every day).

Baseline, measured in the same run: a bare Synapse (the same embedded
homeserver config, warm data folder, no container) from launch until
``/_matrix/client/versions`` answers. The ratio warm/baseline is what
servletkit adds on top of Synapse itself. Target: warm start under 10 s
(median); the script exits 1 if it is missed. The machine is shared: the
spread (min-max) is printed beside each median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from servletkit.dev.embedded_synapse import free_port, start_synapse
from servletkit.testing.dev import DevProcess

WARM_TARGET_S = 10.0

CONFIG = """
[server]
port = {server_port}
[module]
port = {module_port}
[dev]
state_dir = "state"
"""


def write_config(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "servletkit.toml"
    path.write_text(CONFIG.format(server_port=free_port(), module_port=free_port()))
    return path


def time_dev(config: Path) -> tuple[float, float]:
    """One start of ``servletkit dev``: (seconds until ready, seconds to stop)."""
    start = time.perf_counter()
    run = DevProcess.start(config)
    ready = time.perf_counter() - start
    start = time.perf_counter()
    status = run.stop()
    stopped = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"servletkit dev exited with {status}:\n{run.stderr}")
    return ready, stopped


def time_bare_synapse(workdir: Path) -> float:
    """One start of the embedded Synapse alone, until it answers."""
    start = time.perf_counter()
    server = start_synapse(workdir)
    ready = time.perf_counter() - start
    server.stop()
    return ready


def summary(name: str, values: list[float]) -> str:
    return (f"{name:<28} median {statistics.median(values):6.2f} s   "
            f"min {min(values):6.2f}   max {max(values):6.2f}   (n={len(values)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each kind (default 3)")
    args = parser.parse_args()
    runs = max(1, args.runs)

    cold_ready: list[float] = []
    cold_stop: list[float] = []
    warm_ready: list[float] = []
    warm_stop: list[float] = []
    bare: list[float] = []
    with tempfile.TemporaryDirectory(prefix="servletkit-bench-dev-") as tmp:
        root = Path(tmp)
        warm_config = write_config(root / "warm")
        time_dev(warm_config)  # creates the warm state
        time_bare_synapse(root / "bare")  # creates the bare Synapse's database
        for i in range(runs):  # interleaved, so a noisy moment hits every kind alike
            ready, stopped = time_dev(write_config(root / f"cold{i}"))
            cold_ready.append(ready)
            cold_stop.append(stopped)
            ready, stopped = time_dev(warm_config)
            warm_ready.append(ready)
            warm_stop.append(stopped)
            bare.append(time_bare_synapse(root / "bare"))
            print(f"  run {i + 1}/{runs}: cold {cold_ready[-1]:.2f} s, "
                  f"warm {warm_ready[-1]:.2f} s, bare Synapse {bare[-1]:.2f} s",
                  file=sys.stderr, flush=True)

    print(summary("cold start (empty state)", cold_ready))
    print(summary("warm start", warm_ready))
    print(summary("baseline: bare Synapse warm", bare))
    print(summary("stop (SIGTERM to exit), cold", cold_stop))
    print(summary("stop (SIGTERM to exit), warm", warm_stop))
    warm = statistics.median(warm_ready)
    print(f"ratio warm start / bare Synapse: {warm / statistics.median(bare):.2f}x")
    print(f"ratio cold / warm start:         {statistics.median(cold_ready) / warm:.2f}x")
    verdict = "met" if warm < WARM_TARGET_S else "MISSED"
    print(f"target: warm start < {WARM_TARGET_S:g} s: {verdict} ({warm:.2f} s)")
    return 0 if warm < WARM_TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
