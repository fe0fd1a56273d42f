"""`servletkit run` never writes a token into its output (the access log included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from servletkit.testing import only_plugins, plugins_toml
from servletkit.testing.synapse import free_port

HS_TOKEN = "hs-SECRET-4f1c2a9e"


def test_no_token_in_any_log_line(tmp_path: Path) -> None:
    """A query-string token (right, wrong, on a known or unknown path) appears nowhere in
    what the container writes, while the access log still names each request."""
    port = free_port()
    config = tmp_path / "servletkit.toml"
    config.write_text("\n".join([
        f'[server]\nhost = "127.0.0.1"\nport = {port}',
        f'[appservice]\nas_token = "as-token"\nhs_token = "{HS_TOKEN}"',
        plugins_toml(only_plugins({})),
    ]))
    process = subprocess.Popen(
        [sys.executable, "-m", "servletkit.container.cli", "run", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/_servletkit/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
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
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=15)
    assert '"POST /_matrix/app/v1/ping HTTP/1.1" 200' in output  # the access log is on
    assert '"GET /nowhere HTTP/1.1" 404' in output
    assert "SECRET" not in output
