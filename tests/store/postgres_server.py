"""A real PostgreSQL server for the store tests: a child process on a free loopback port.

Started from the Debian package's binaries (``/usr/lib/postgresql/*/bin``) in a temp
dir; as root (PostgreSQL refuses to run as root) initdb and postgres run as the
``postgres`` user, which then owns the temp dir. Unix sockets go into the temp dir
too, so nothing touches the system cluster.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin dir, or ``None`` if there is none."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One throwaway cluster; :attr:`url` reaches its ``postgres`` database as superuser
    ``servletkit`` (trust authentication, loopback only)."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="servletkit-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.user = "servletkit"
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        result = subprocess.run([*self._as, *args], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}):\n"
                               f"{result.stdout}{result.stderr}")

    def start(self) -> None:
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", self.user,
                  "--auth=trust", "--encoding=UTF8", "--no-sync")
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self._run(str(self.bin_dir / "pg_ctl"), "start", "-w", "-t", "60", "-D",
                  str(self.data), "-l", str(self.dir / "server.log"), "-o", options)

    def stop(self) -> None:
        try:
            self._run(str(self.bin_dir / "pg_ctl"), "stop", "-w", "-m", "immediate",
                      "-D", str(self.data))
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
