"""Two ``servletkit run`` processes on one PostgreSQL database, each with a plugin that
runs a singleton task: it runs in one process only; SIGKILL that one and the other
takes it over within seconds."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from servletkit.dev.embedded_synapse import stop_process
from servletkit.testing import only_plugins, plugin_site, plugins_toml, python_path_env
from servletkit.testing.container import start_container
from servletkit.testing.synapse import free_port

pytestmark = pytest.mark.integration

TICKER = '''
import asyncio, os
from servletkit import hookimpl

task = None

async def tick(context):
    while True:  # one line per tick, naming this process
        with open(context.config["ticks"], "a") as ticks:
            ticks.write(f"{os.getpid()}\\n")
        await asyncio.sleep(0.05)

@hookimpl
async def servlet_init(context):
    global task
    task = asyncio.create_task(context.store.singleton("ticker", lambda: tick(context)))

@hookimpl
async def servlet_destroy(context):
    task.cancel()
'''


def _pids(ticks: Path) -> list[int]:
    return [int(line) for line in ticks.read_text().split()] if ticks.exists() else []


def _wait_for(condition: Callable[[], object], within: float) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not within {within} s"
        time.sleep(0.05)


@pytest.fixture
def processes(
    tmp_path: Path, postgres_url: str
) -> Iterator[tuple[Path, list[subprocess.Popen[bytes]]]]:
    """The ticks file both processes' plugin writes to, and the two processes."""
    ticks = tmp_path / "ticks"
    env = python_path_env(plugin_site(tmp_path, "ticker", TICKER))
    started = []
    for name in ("a", "b"):
        workdir = tmp_path / name
        workdir.mkdir()
        port = free_port()
        config = workdir / "servletkit.toml"
        config.write_text("\n".join([
            f'[server]\nhost = "127.0.0.1"\nport = {port}',
            f'[store]\nurl = "{postgres_url}"\npool_size = 2',
            plugins_toml(only_plugins({"ticker": {"ticks": str(ticks)}})),
        ]))
        started.append(start_container(config, f"http://127.0.0.1:{port}", workdir=workdir,
                                       env=env))
    yield ticks, started
    for process in started:
        stop_process(process, 10)


def test_singleton_moves_when_its_process_is_killed(
        processes: tuple[Path, list[subprocess.Popen[bytes]]]) -> None:
    """Only one process ticks, with both up; after a SIGKILL of it the other ticks,
    within 5 s."""
    ticks, started = processes
    _wait_for(lambda: len(_pids(ticks)) >= 20, within=10)
    time.sleep(1)  # both processes are up: still one ticker
    before = _pids(ticks)
    assert len(set(before)) == 1, before
    holder = next(p for p in started if p.pid == before[0])
    holder.kill()
    holder.wait(10)
    killed_at, count = time.monotonic(), len(before)
    _wait_for(lambda: set(_pids(ticks)[count:]) - {holder.pid}, within=10)
    took_over_s = time.monotonic() - killed_at
    time.sleep(1)
    after = [pid for pid in _pids(ticks)[count:] if pid != holder.pid]
    assert set(after) == {p.pid for p in started if p is not holder}
    assert took_over_s < 5, took_over_s
