"""`servletkit run` with a plugin that blocks the event loop (issue 15).

Before the hang guard, a ``time.sleep`` in a sync hook froze every wire for its
whole duration: health, queries and transactions all waited. Now the plugin is
interrupted after its budget and then runs in worker threads, so the container
keeps answering while the plugin sleeps on.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx

from servletkit.testing import only_plugins, plugin_site, plugins_toml, python_path_env
from servletkit.testing.container import start_container
from servletkit.testing.synapse import free_port

BLOCKER = '''
import time
from servletkit import hookimpl

@hookimpl
def on_query_user(user_id, context):
    time.sleep(60)  # a blocking call in a sync hook: the classic mistake
    return True
'''
AUTH = {"Authorization": "Bearer hs-token"}


def test_a_blocking_plugin_does_not_stall_the_container(tmp_path: Path) -> None:
    site = plugin_site(tmp_path, "blocker", BLOCKER)
    port = free_port()
    config = tmp_path / "servletkit.toml"
    config.write_text("\n".join([
        f'[server]\nhost = "127.0.0.1"\nport = {port}',
        '[appservice]\nas_token = "as-token"\nhs_token = "hs-token"',
        '[[appservice.namespaces.users]]\nregex = "@_x_.*"\nexclusive = true',
        plugins_toml(only_plugins({"blocker": {"timeout_ms": 300}})),
    ]))
    url = f"http://127.0.0.1:{port}"
    process = start_container(config, url, workdir=tmp_path, env=python_path_env(site))
    try:
        for attempt in ("interrupted on the loop", "given up on in a worker thread"):
            answer, took, health = query_while_polling_health(url)
            assert answer.status_code == 404, attempt  # no plugin answered in time
            assert took < 10, f"the query waited {took:.1f} s ({attempt})"
            assert max(health) < 5, f"health waited {max(health):.1f} s ({attempt})"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
    log = (tmp_path / "container.log").read_text()
    assert "held the event loop" in log
    assert "its sync hooks run in worker threads from now on" in log


def query_while_polling_health(url: str) -> tuple[httpx.Response, float, list[float]]:
    """Ask the blocking query hook while another thread polls the health endpoint.

    Returns the query's answer, how long it took, and each health request's duration.
    """
    health: list[float] = []
    stop = threading.Event()

    def poll_health() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                started = time.perf_counter()
                assert client.get(f"{url}/_servletkit/health").status_code == 200
                health.append(time.perf_counter() - started)
                time.sleep(0.02)

    poller = threading.Thread(target=poll_health)
    poller.start()
    try:
        started = time.perf_counter()
        answer = httpx.get(f"{url}/_matrix/app/v1/users/@_x_romeo:localhost",
                           headers=AUTH, timeout=30)
        took = time.perf_counter() - started
        time.sleep(0.3)
    finally:
        stop.set()
        poller.join()
    return answer, took, health
