"""`servletkit run` against careless and hostile clients: no token in any log line (the
access log included), no connection held open without a request."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from servletkit.testing import only_plugins, plugins_toml
from servletkit.testing.container import start_container
from servletkit.testing.synapse import free_port

HS_TOKEN = "hs-SECRET-4f1c2a9e"


def run(
    tmp_path: Path, server: str = "", *, sections: str = "",
    plugins: Mapping[str, Mapping[str, Any]] | None = None, env: Mapping[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """``servletkit run`` with the appservice wire, ``server`` keys, other ``sections`` and
    only ``plugins`` (name → table), in ``env``, once it answers; its output goes to
    ``tmp_path/container.log`` (:func:`stop`)."""
    port = free_port()
    config = tmp_path / "servletkit.toml"
    config.write_text("\n".join([
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n{server}',
        f'[appservice]\nas_token = "as-token"\nhs_token = "{HS_TOKEN}"',
        sections,
        plugins_toml(only_plugins(plugins or {})),
    ]))
    url = f"http://127.0.0.1:{port}"
    return start_container(config, url, workdir=tmp_path, env=env), url


def stop(process: subprocess.Popen[bytes], tmp_path: Path) -> str:
    """Stop ``servletkit run`` as an operator does (SIGTERM); return all it wrote."""
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=15)
    return (tmp_path / "container.log").read_text()


def test_no_token_in_any_log_line(tmp_path: Path) -> None:
    """A query-string token (right, wrong, on a known or unknown path) appears nowhere in
    what the container writes, while the access log still names each request."""
    process, url = run(tmp_path)
    try:
        answers = [
            httpx.post(f"{url}/_matrix/app/v1/ping?access_token={HS_TOKEN}", json={}),
            httpx.post(f"{url}/_matrix/app/v1/ping?x=1&access_token={HS_TOKEN}-wrong", json={}),
            httpx.get(f"{url}/_matrix/app/v1/users/@a:localhost?access_token={HS_TOKEN}"),
            httpx.get(f"{url}/nowhere?access_token={HS_TOKEN}"),
            httpx.post(f"{url}/_matrix/app/v1/ping", json={},
                       headers={"Authorization": f"Bearer {HS_TOKEN}"}),
        ]
        assert [answer.status_code for answer in answers] == [200, 403, 404, 404, 200]
    finally:
        output = stop(process, tmp_path)
    assert '"POST /_matrix/app/v1/ping HTTP/1.1" 200' in output  # the access log is on
    assert '"GET /nowhere HTTP/1.1" 404' in output
    assert "SECRET" not in output


def test_connections_without_a_request_are_closed(tmp_path: Path) -> None:
    """A connection that sends nothing, or headers that never end, is closed within two
    header_timeout_s; one that sends its request in time is answered."""
    process, url = run(tmp_path, "header_timeout_s = 0.5\nkeep_alive_s = 60")
    port = int(url.rpartition(":")[2])
    try:
        silent = socket.create_connection(("127.0.0.1", port))
        dribbling = socket.create_connection(("127.0.0.1", port))
        answered = socket.create_connection(("127.0.0.1", port))
        started = time.monotonic()
        dribbling.sendall(b"GET /_servletkit/health HTTP/1.1\r\nHost: c\r\n")
        answered.sendall(b"GET /_servletkit/health HTTP/1.1\r\nHost: c\r\n\r\n")
        assert answered.recv(100).startswith(b"HTTP/1.1 200 ")
        answered.sendall(b"GET /_servletkit/health HTTP/1.1\r\n")  # then nothing more
        for sock in (silent, dribbling, answered):
            sock.settimeout(5)
            with sock:
                while sock.recv(65536):  # the rest of an answer, then the end
                    pass
        took = time.monotonic() - started
        assert took < 1.5, took
    finally:
        stop(process, tmp_path)
