"""``servletkit run`` as a child process, for integration tests of plugins and wires."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx


def start_container(
    config_path: Path,
    url: str,
    *,
    workdir: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    python: str = sys.executable,
) -> subprocess.Popen[bytes]:
    """Start ``servletkit run --config config_path`` in ``workdir`` with ``python``
    (this interpreter by default; another environment's to test what is installed
    there); return once ``{url}/_servletkit/health`` answers 200 (its plugins are live).

    Its output is appended to ``workdir/container.log``. Raises ``RuntimeError``
    naming that log if it exits first, or does not answer within ``timeout`` seconds.
    """
    log_path = workdir / "container.log"
    with open(log_path, "ab") as log:  # the child keeps its own copy
        process = subprocess.Popen(
            [python, "-m", "servletkit.container.cli", "run", "--config",
             str(config_path)],
            stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
            env=None if env is None else dict(env),
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"servletkit run exited; see {log_path}")
        try:
            if httpx.get(f"{url}/_servletkit/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"servletkit run did not answer within {timeout:g} s; see {log_path}")
