"""A real nginx (the Debian package) as the test's load balancer: a child process with a
generated config in a folder of its own, listening on a loopback port, no root paths.
It dies with the process that started it (a killed test run leaves no nginx behind)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx

from servletkit.dev.embedded_synapse import dying_with_parent, stop_process
from servletkit.testing.synapse import free_port

CONFIG = """\
daemon off;
master_process off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    upstream servletkit {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://servletkit;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_connect_timeout 1s;
            proxy_read_timeout 60s;
            proxy_next_upstream error timeout http_502 http_503;
        }}
    }}
}}
"""
"""The load balancer docs/deploy.md describes, with test paths: round robin over the
instances; a request an instance fails (refused, dropped, 502/503) goes to the next."""


def nginx_binary() -> str | None:
    """nginx from PATH or /usr/sbin (Debian's place, often not on a user's PATH)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")


class Nginx:
    """nginx balancing ``upstreams`` (``host:port`` each) on ``127.0.0.1:port``."""

    def __init__(self, root: Path, upstreams: list[str]) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (root / "tmp").mkdir(parents=True)
        servers = "\n".join(f"        server {address} max_fails=1 fail_timeout=2s;"
                            for address in upstreams)
        (root / "nginx.conf").write_text(CONFIG.format(root=root, servers=servers,
                                                       port=self.port))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, binary: str, timeout: float = 10.0) -> None:
        """Start it; return once it answers (any status: the upstreams may be down)."""
        self.process = subprocess.Popen(
            [binary, "-p", str(self.root), "-c", str(self.root / "nginx.conf"),
             "-e", str(self.root / "error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=dying_with_parent())
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: {(self.root / 'error.log').read_text()}")
            try:
                httpx.get(f"{self.url}/_servletkit/health", timeout=1)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not answer within {timeout:g} s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, 10)
            self.process = None
