"""The servers the suite starts die with the process that started them: a test run
killed with SIGKILL (no teardown runs) leaves no nginx or PostgreSQL behind.

Each case starts the fixture's server from a child Python process, SIGKILLs that child,
and waits (bounded) for the server's process to go and its port to refuse connections.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.deploy.nginx import nginx_binary
from tests.store.postgres_server import postgres_bin

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform != "linux", reason="prctl(PR_SET_PDEATHSIG) is Linux's"),
]

ROOT = Path(__file__).resolve().parents[2]

NGINX = """
import sys, time
from pathlib import Path
from tests.deploy.nginx import Nginx
server = Nginx(Path(sys.argv[1]), ["127.0.0.1:9"])
server.start(sys.argv[2])
print(server.process.pid, server.port, flush=True)
time.sleep(120)
"""

POSTGRES = """
import sys, time
from pathlib import Path
from tests.store.postgres_server import PostgresServer
server = PostgresServer(Path(sys.argv[1]))
server.start()
print(server.process.pid, server.port, server.dir, flush=True)
time.sleep(120)
"""


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def kill_starter_and_watch(script: str, *args: str, within: float = 10.0) -> list[str]:
    """Run ``script`` (it starts a server and prints its pid, its port and anything
    else), SIGKILL it, and assert the server is gone within ``within`` seconds.
    Returns the anything else."""
    starter = subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.PIPE, text=True)
    server_pid = 0
    try:
        assert starter.stdout is not None
        line = starter.stdout.readline()  # the starter's own start is bounded (60 s)
        assert line, f"the starter exited with {starter.wait(5)} before its server ran"
        pid_text, port_text, *rest = line.split()
        server_pid, port = int(pid_text), int(port_text)
        assert alive(server_pid) and listening(port)
        starter.send_signal(signal.SIGKILL)
        starter.wait(10)
        deadline = time.monotonic() + within
        while alive(server_pid) or listening(port):
            assert time.monotonic() < deadline, \
                f"the server (pid {server_pid}) outlived its killed parent by {within:g} s"
            time.sleep(0.05)
        return rest
    finally:
        starter.kill()
        starter.wait(10)
        if starter.stdout is not None:
            starter.stdout.close()
        if server_pid and alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)


def test_nginx_dies_with_its_parent(tmp_path: Path) -> None:
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install nginx, or run .ci/run)")
    kill_starter_and_watch(NGINX, str(tmp_path / "nginx"), binary)


def test_postgres_dies_with_its_parent() -> None:
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql, or run .ci/run)")
    cluster = kill_starter_and_watch(POSTGRES, str(bin_dir))
    shutil.rmtree(cluster[0], ignore_errors=True)  # the killed starter could not
