"""Drive ``servletkit dev`` from tests and scripts: a subprocess and the facts of its dev.json.

A plugin author's end-to-end test::

    run = DevProcess.start(Path("servletkit.toml"))
    try:
        facts = run.facts          # homeserver_url, test_user, ... (servletkit.dev.command)
        ...                        # log in, send messages, see the plugin act
    finally:
        run.stop()
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from servletkit.container.config import load_config
from servletkit.dev.embedded_synapse import free_port, stop_process
from servletkit.dev.state import DevPaths
from servletkit.testing import only_plugins, plugins_toml


def write_dev_config(folder: Path, plugins: Mapping[str, Mapping[str, Any]]) -> Path:
    """A ``folder/servletkit.toml`` for ``servletkit dev`` on free loopback ports, its state
    in ``folder/state``, running only ``plugins`` (name → ``[plugins.NAME]`` table)."""
    config = folder / "servletkit.toml"
    config.write_text(f"[server]\nport = {free_port()}\n[module]\nport = {free_port()}\n"
                      f"[dev]\nstate_dir = \"state\"\n" + plugins_toml(only_plugins(plugins)))
    return config


class DevStartError(RuntimeError):
    """``servletkit dev`` exited or did not get ready; the message has its output."""


@attrs.define
class DevProcess:
    """A running ``servletkit dev`` (its own session, so signals reach only it).

    Its output goes to two temporary files, never to pipes: a pipe that nobody
    reads fills up (64 KiB on Linux) and then blocks ``servletkit dev`` as soon
    as a plugin logs a lot. :attr:`stdout` and :attr:`stderr` read them; once
    the process has ended and been waited for (:meth:`wait`, :meth:`stop`,
    :meth:`kill`) the text is kept and the files are removed.
    """

    process: subprocess.Popen[bytes]
    run_file: Path
    output_files: tuple[Path, Path]
    facts: dict[str, Any] = attrs.field(factory=dict)
    _output: tuple[str, str] | None = attrs.field(default=None, init=False)

    @classmethod
    def launch(cls, config: Path, env: Mapping[str, str] | None = None,
               args: Sequence[str] = ()) -> DevProcess:
        """Start ``servletkit dev --config config [args]`` with this interpreter (``args``
        such as ``["--xmpp"]``); do not wait."""
        run_file = DevPaths.for_config(load_config(config)).run_file
        with (  # closed here once the child has its own copies
            tempfile.NamedTemporaryFile(prefix="servletkit-dev-", suffix=".out",
                                        delete=False) as out,
            tempfile.NamedTemporaryFile(prefix="servletkit-dev-", suffix=".err",
                                        delete=False) as err,
        ):
            process = subprocess.Popen(
                [sys.executable, "-m", "servletkit.container.cli", "dev", "--config",
                 str(config), *args],
                stdout=out, stderr=err, env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        return cls(process, run_file, (Path(out.name), Path(err.name)))

    @classmethod
    def start(
        cls, config: Path, env: Mapping[str, str] | None = None, *, timeout: float = 60.0,
        args: Sequence[str] = (),
    ) -> DevProcess:
        """Start it and wait until its dev.json names it (everything answers)."""
        run = cls.launch(config, env, args)
        run.wait_ready(timeout)
        return run

    @property
    def stdout(self) -> str:
        """What it has printed to stdout so far (all of it once it has been waited for)."""
        return self._read(0)

    @property
    def stderr(self) -> str:
        """What it has printed to stderr so far (all of it once it has been waited for)."""
        return self._read(1)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait for this process's dev.json; raise :class:`DevStartError` if it exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._keep_output()
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

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for it to exit on its own; return the exit status.

        Raises :class:`subprocess.TimeoutExpired` after ``timeout`` seconds, once
        it has been killed (its output is kept).
        """
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._keep_output()
        return self.process.returncode

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait, keep the output; return the exit status (SIGKILL after ``timeout``)."""
        status = stop_process(self.process, timeout)
        self._keep_output()
        return status

    def kill(self) -> None:
        """SIGKILL it (its Synapse dies with it) and keep the output."""
        self.process.kill()
        self.process.wait()
        self._keep_output()

    def _read(self, index: int) -> str:
        if self._output is not None:
            return self._output[index]
        try:
            return self.output_files[index].read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def _keep_output(self) -> None:
        """Read the output files into memory and remove them (the process has ended)."""
        if self._output is None:
            self._output = (self.stdout, self.stderr)
            for path in self.output_files:
                path.unlink(missing_ok=True)
