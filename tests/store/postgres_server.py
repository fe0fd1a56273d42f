"""A real PostgreSQL server for the store tests: a child process on a free loopback port.

Started from the Debian package's binaries (``/usr/lib/postgresql/*/bin``) in a temp
dir; as root (PostgreSQL refuses to run as root) initdb and postgres run as the
``postgres`` user, which then owns the temp dir. Unix sockets go into the temp dir
too, so nothing touches the system cluster. The postmaster is this process's own
child (not daemonised by ``pg_ctl``) and dies with it, so a killed test run leaves
no server behind.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from servletkit.dev.embedded_synapse import dying_with_parent, free_port


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin dir, or ``None`` if there is none."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """One throwaway cluster; :attr:`url` reaches its ``postgres`` database as superuser
    ``servletkit`` (trust authentication, loopback only)."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="servletkit-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.user = "servletkit"
        self._as: dict[str, Any] = {}  # subprocess options: as root, run as postgres
        self.process: subprocess.Popen[bytes] | None = None
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self._as = {"user": "postgres", "group": "postgres", "extra_groups": []}

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        result = subprocess.run(args, capture_output=True, text=True, check=False, **self._as)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}):\n"
                               f"{result.stdout}{result.stderr}")

    def start(self, timeout: float = 60.0) -> None:
        """initdb, then the postmaster as a child that gets SIGINT (fast shutdown:
        sessions ended, no waiting for clients) when this process dies; return once it
        accepts connections, or raise after ``timeout`` seconds."""
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", self.user,
                  "--auth=trust", "--encoding=UTF8", "--no-sync")
        with open(self.dir / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                [str(self.bin_dir / "postgres"), "-D", str(self.data),
                 "-c", "listen_addresses=127.0.0.1", "-p", str(self.port), "-k", str(self.dir),
                 "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off"],
                stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=dying_with_parent(signal.SIGINT), **self._as)
        deadline = time.monotonic() + timeout
        while subprocess.run([str(self.bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1",
                              "-p", str(self.port)], check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                log_text = (self.dir / "server.log").read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"PostgreSQL did not start within {timeout:g} s:\n{log_text}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Immediate shutdown (SIGQUIT; SIGKILL after 10 s), then remove the cluster."""
        try:
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signal.SIGQUIT)
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
