"""Hot reload (issue 13): save-to-serving and ``servletkit reload``, beside a process restart.

Run::

    .venv/bin/python benchmarks/reload.py            # 10 saves, 5 reloads, 3 restarts
    .venv/bin/python benchmarks/reload.py --quick    # 5, 3, 2

* **save-to-serving**: the reloader ``servletkit dev`` runs
  (:class:`servletkit.dev.watch.PluginWatcher`, watchfiles) watches an editable
  plugin in a container in this process; the plugin's file is rewritten and the
  clock stops when the first call answers from the new code. Meanwhile a stream
  of calls (one after the other, without pause) counts answers that were missing
  or failed: the target is none.
* **servletkit reload**: the command (a new Python process) against
  ``servletkit run``, until it returns with the new version serving.
* **restart** (baseline): ``servletkit run`` terminated and started again, until
  ``/_servletkit/health`` answers 200: what a reload saves a homeserver from.

Target: save-to-serving under 500 ms (median), with zero failed or missing
answers; the script exits 1 if either is missed. The machine is shared: the
spread (min-max) is printed beside each median. Synapse is not involved: it
would add its own request time to every probe, not to the reload.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from servletkit.container.config import parse_config
from servletkit.container.runtime import Container
from servletkit.dev.embedded_synapse import free_port
from servletkit.dev.watch import PluginWatcher
from servletkit.testing import make_event, only_plugins, plugins_toml, python_path_env

SAVE_TARGET_S = 0.5
NAME = "benchy"
CODE = '''
from servletkit import Veto, hookimpl

@hookimpl
def on_send_event(event, context):
    return Veto("{marker}")
'''


def install(site: Path, marker: str) -> None:
    """``benchy`` in ``site``, as ``pip install -e`` leaves it (direct_url.json editable)."""
    package = site / NAME
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(CODE.format(marker=marker))
    dist = site / f"{NAME}-1.0.dist-info"
    if not dist.exists():
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {NAME}\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text(f"[servletkit.plugins]\n{NAME} = {NAME}\n")
        (dist / "direct_url.json").write_text(
            f'{{"dir_info": {{"editable": true}}, "url": "{package.as_uri()}"}}')


async def save_to_serving(folder: Path, saves: int) -> tuple[list[float], int, int]:
    """Times from a save to the first answer of the new code; calls made; bad answers."""
    site = folder / "site"
    install(site, "v0")
    sys.path.insert(0, str(site))
    config = parse_config({"plugins": only_plugins({NAME: {}})}, folder / "servletkit.toml")
    container = Container(config)
    container.load()
    await container.start()
    watcher = asyncio.create_task(PluginWatcher(container, lambda line: None).run())
    await asyncio.sleep(0.5)  # watchfiles has started
    latest, calls, bad = "v0", 0, 0
    stop = asyncio.Event()

    async def stream() -> None:
        nonlocal latest, calls, bad
        while not stop.is_set():
            outcome = await container.dispatcher.intercept("on_send_event", make_event("x"))
            calls += 1
            if outcome.decision is None or outcome.failures:
                bad += 1
            else:
                latest = outcome.decision.reason  # type: ignore[union-attr]
            await asyncio.sleep(0)

    streaming = asyncio.create_task(stream())
    times = []
    try:
        for n in range(1, saves + 1):
            marker = f"v{n}"
            started = time.perf_counter()
            install(site, marker)
            while latest != marker:
                if time.perf_counter() - started > 10:
                    raise SystemExit(f"save {n}: the new code did not serve within 10 s")
                await asyncio.sleep(0.001)
            times.append(time.perf_counter() - started)
            await asyncio.sleep(0.1)  # let the old version drain
    finally:
        stop.set()
        await streaming
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await container.stop()
    return times, calls, bad


def wait_healthy(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("servletkit run exited")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/_servletkit/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.01)
    raise SystemExit("servletkit run did not become healthy within 60 s")


def commands(folder: Path, reloads: int, restarts: int) -> tuple[list[float], list[float]]:
    """Times of ``servletkit reload`` and of restarts of ``servletkit run``."""
    site = folder / "cli-site"
    install(site, "c0")
    port = free_port()
    config = folder / "cli.toml"
    config.write_text(f"[server]\nport = {port}\n" + plugins_toml(only_plugins({NAME: {}})))
    env = python_path_env(site)
    run = [sys.executable, "-m", "servletkit.container.cli", "run", "--config", str(config)]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    process = subprocess.Popen(run, env=env, **quiet)  # type: ignore[call-overload]
    reload_times, restart_times = [], []
    try:
        wait_healthy(port, process)
        for n in range(1, reloads + 1):
            install(site, f"c{n}")
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "servletkit.container.cli", "reload", NAME,
                            "--config", str(config)], env=env, check=True, **quiet)
            reload_times.append(time.perf_counter() - started)
        for _ in range(restarts):
            started = time.perf_counter()
            process.terminate()
            process.wait(30)
            process = subprocess.Popen(run, env=env, **quiet)  # type: ignore[call-overload]
            wait_healthy(port, process)
            restart_times.append(time.perf_counter() - started)
    finally:
        process.terminate()
        process.wait(30)
    return reload_times, restart_times


def show(label: str, times: list[float]) -> str:
    return (f"{label:<18} median {statistics.median(times) * 1000:7.1f} ms   "
            f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}, n={len(times)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    saves, reloads, restarts = (5, 3, 2) if args.quick else (10, 5, 3)
    with tempfile.TemporaryDirectory(prefix="servletkit-bench-reload-") as folder:
        saved, calls, bad = asyncio.run(save_to_serving(Path(folder), saves))
        reload_times, restart_times = commands(Path(folder), reloads, restarts)
    print(show("save-to-serving", saved))
    print(show("servletkit reload", reload_times))
    print(show("restart (baseline)", restart_times))
    print(f"calls during the saves: {calls}, missing or failed answers: {bad}")
    ratio = statistics.median(restart_times) / statistics.median(saved)
    print(f"a restart takes {ratio:.1f}x a save-to-serving reload")
    met = statistics.median(saved) < SAVE_TARGET_S and bad == 0
    print(f"target: save-to-serving < {SAVE_TARGET_S * 1000:.0f} ms, no bad answers: "
          f"{'met' if met else 'MISSED'}")
    return 0 if met else 1



if __name__ == "__main__":
    sys.exit(main())
