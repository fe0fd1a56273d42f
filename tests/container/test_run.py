"""`servletkit run` serves the container over HTTP with Matrix-style errors, and stops cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from servletkit.testing.synapse import free_port


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    root = tmp_path_factory.mktemp("run")
    port = free_port()
    config = root / "servletkit.toml"
    config.write_text(f'[server]\nhost = "127.0.0.1"\nport = {port}\n')
    process = subprocess.Popen(
        [sys.executable, "-m", "servletkit.container.cli", "run", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/_servletkit/health", timeout=1)
            break
        except httpx.TransportError:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            time.sleep(0.05)
    yield url, process
    if process.poll() is None:
        process.kill()
        process.wait()
    if process.stdout:
        process.stdout.close()


def test_health_lists_live_plugins(served: tuple[str, subprocess.Popen[str]]) -> None:
    url, _ = served
    body = httpx.get(f"{url}/_servletkit/health").json()
    assert body["status"] == "ok"
    assert {"word_filter", "formatter"} <= set(body["plugins"])  # the bundled examples


def test_unknown_path_and_wrong_method_are_matrix_errors(
    served: tuple[str, subprocess.Popen[str]],
) -> None:
    url, _ = served
    missing = httpx.get(f"{url}/_matrix/nothing/here")
    assert missing.status_code == 404
    assert missing.json()["errcode"] == "M_UNRECOGNIZED"
    wrong = httpx.delete(f"{url}/_servletkit/health")
    assert wrong.status_code == 405
    assert wrong.json()["errcode"] == "M_UNRECOGNIZED"


def test_sigterm_stops_it(served: tuple[str, subprocess.Popen[str]]) -> None:
    _, process = served
    process.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal it caught
    assert process.wait(timeout=15) in (0, -signal.SIGTERM)
    output = process.stdout.read() if process.stdout else ""
    assert "Application shutdown complete" in output
    assert "Traceback" not in output


@pytest.mark.parametrize(("option", "setting"), [(False, "[server] port in {config}"),
                                                 (True, "--port")])
def test_a_taken_port_is_one_message(tmp_path: Path, option: bool, setting: str) -> None:
    """The port to serve on is in use: exit 1 with one line naming the port and where it was
    set (the config key and file, or --port), as servletkit dev says it; no uvicorn error."""
    config = tmp_path / "servletkit.toml"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config.write_text(f"[server]\nport = {port if not option else free_port()}\n")
        result = subprocess.run(
            [sys.executable, "-m", "servletkit.container.cli", "run", "--config", str(config),
             *(["--port", str(port)] if option else [])],
            capture_output=True, text=True, timeout=30, check=False,
        )
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"servletkit: port {port} on 127.0.0.1 is not available (Address already in use): "
        f"stop the process using it, or choose another {setting.format(config=config)}")
    assert "Errno" not in result.stderr and "Traceback" not in result.stderr
