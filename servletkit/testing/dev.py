"""Drive ``servletkit dev`` from tests and scripts: a subprocess and the facts of its dev.json.

A plugin author's end-to-end test::

    run = DevProcess.start(Path("servletkit.toml"))
    try:
        facts = run.facts          # homeserver_url, test_user, ... (servletkit.container.dev)
        ...                        # log in, send messages, see the plugin act
    finally:
        run.stop()
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from servletkit.container.config import load_config
from servletkit.container.dev import DevPaths


class DevStartError(RuntimeError):
    """``servletkit dev`` exited or did not get ready; the message has its output."""


@attrs.define
class DevProcess:
    """A running ``servletkit dev`` (its own session, so signals reach only it)."""

    process: subprocess.Popen[str]
    run_file: Path
    facts: dict[str, Any] = attrs.field(factory=dict)
    stdout: str = ""
    stderr: str = ""

    @classmethod
    def launch(cls, config: Path, env: Mapping[str, str] | None = None) -> DevProcess:
        """Start ``servletkit dev --config config`` with this interpreter; do not wait."""
        process = subprocess.Popen(
            [sys.executable, "-m", "servletkit.container.cli", "dev", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )
        return cls(process, DevPaths.for_config(load_config(config)).run_file)

    @classmethod
    def start(cls, config: Path, *, timeout: float = 60.0) -> DevProcess:
        """Start it and wait until its dev.json names it (everything answers)."""
        run = cls.launch(config)
        run.wait_ready(timeout)
        return run

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait for this process's dev.json; raise :class:`DevStartError` if it exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stdout, self.stderr = self.process.communicate()
                raise DevStartError(f"servletkit dev exited with {self.process.returncode}:\n"
                                    f"{self.stdout}\n{self.stderr}")
            try:
                facts = json.loads(self.run_file.read_text())
            except (FileNotFoundError, ValueError):
                facts = {}
            if facts.get("pids", {}).get("servletkit") == self.process.pid:
                self.facts = facts
                return
            time.sleep(0.02)
        self.kill()
        raise DevStartError(f"no {self.run_file} within {timeout:g} s:\n{self.stdout}\n"
                            f"{self.stderr}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait, keep the output; return the exit status (SIGKILL after ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.stdout, self.stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL it (its Synapse dies with it) and collect the output."""
        self.process.kill()
        self.stdout, self.stderr = self.process.communicate()
