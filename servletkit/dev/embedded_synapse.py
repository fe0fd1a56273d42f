"""A real Synapse homeserver on loopback, for ``servletkit dev``, tests and benchmarks.

:func:`start_synapse` writes a test-friendly ``homeserver.yaml`` (SQLite, plain
HTTP on 127.0.0.1, open registration, relaxed rate limits, fast bcrypt, no
outbound federation or key servers), starts ``python -m synapse.app.homeserver``
as a child process with the interpreter given (the current one by default),
and returns once ``/_matrix/client/versions`` answers (:func:`launch_synapse`
and :meth:`SynapseServer.wait_ready` are its two halves, for callers that wait
in their own way). Synapse comes from the ``servletkit[synapse]`` extra (pinned).
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from servletkit.files import write_private

PR_SET_PDEATHSIG = 1  # prctl(2) option: signal the child when its parent dies

_RELAXED = {"per_second": 1000, "burst_count": 1000}
_RATE_LIMITS: dict[str, Any] = {
    **{key: _RELAXED for key in (
        "rc_message", "rc_registration", "rc_joins_per_room", "rc_room_creation",
        "rc_3pid_validation", "rc_admin_redaction", "rc_profile", "rc_delayed_event_mgmt",
        "rc_reports", "rc_user_directory", "rc_media_create",
    )},
    "rc_login": {"address": _RELAXED, "account": _RELAXED, "failed_attempts": _RELAXED},
    "rc_joins": {"local": _RELAXED, "remote": _RELAXED},
    "rc_invites": {"per_room": _RELAXED, "per_user": _RELAXED, "per_issuer": _RELAXED},
    "rc_presence": {"per_user": _RELAXED},
}


class SynapseError(RuntimeError):
    """Synapse did not start; the message says why and where its log is."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(process: subprocess.Popen[Any], timeout: float) -> int:
    """SIGTERM ``process``, SIGKILL it if it has not exited within ``timeout`` seconds.

    Returns its exit status (negative: the signal that ended it). A process
    that has already exited is only reaped.
    """
    if process.poll() is None:
        process.terminate()
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def homeserver_config(
    workdir: Path,
    port: int,
    *,
    server_name: str = "localhost",
    modules: Sequence[Mapping[str, Any]] = (),
    app_service_config_files: Sequence[str | Path] = (),
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``homeserver.yaml`` content (as a dict) for a loopback test homeserver."""
    workdir = workdir.resolve()
    config: dict[str, Any] = {
        "server_name": server_name,
        "public_baseurl": f"http://127.0.0.1:{port}/",
        "pid_file": str(workdir / "homeserver.pid"),
        "listeners": [{
            "port": port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
            "x_forwarded": False,
            "resources": [{"names": ["client", "federation"], "compress": False}],
        }],
        "database": {"name": "sqlite3", "args": {"database": str(workdir / "homeserver.db")}},
        "media_store_path": str(workdir / "media_store"),
        "signing_key_path": str(workdir / f"{server_name}.signing.key"),
        "report_stats": False,
        "enable_metrics": False,
        "presence": {"enabled": False},
        "enable_registration": True,
        "enable_registration_without_verification": True,
        "registration_shared_secret": "servletkit-test-registration-secret",
        "macaroon_secret_key": "servletkit-test-macaroon-secret",
        "form_secret": "servletkit-test-form-secret",
        "bcrypt_rounds": 4,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        **_RATE_LIMITS,
    }
    if modules:
        config["modules"] = [dict(module) for module in modules]
    if app_service_config_files:
        config["app_service_config_files"] = [str(Path(p).resolve())
                                              for p in app_service_config_files]
    config.update(extra or {})
    return config


@attrs.define
class SynapseServer:
    """A Synapse child process, and how to start it again (same config, port and data)."""

    url: str
    port: int
    workdir: Path
    server_name: str = "localhost"
    python: str = sys.executable
    env: dict[str, str] = attrs.field(factory=lambda: dict(os.environ), repr=False)
    die_with_parent: bool = False
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "synapse.log"

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start Synapse on ``workdir/homeserver.yaml``; return without waiting."""
        preexec = dying_with_parent() if self.die_with_parent else None
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [self.python, "-m", "synapse.app.homeserver", "-c",
                 str(self.workdir / "homeserver.yaml")],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir,
                preexec_fn=preexec, start_new_session=self.die_with_parent,
            )
        return self.process

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
        if self.process is not None:
            stop_process(self.process, timeout)

    def restart(self, timeout: float = 60.0) -> None:
        """Stop Synapse and start it again on the same port and data; wait until it answers."""
        self.stop()
        self.spawn()
        self.wait_ready(timeout)

    def register(self, localpart: str, password: str = "servletkit-pw-1") -> dict[str, Any]:
        """Register a user with open registration; return the response (user_id, access_token)."""
        return register_user(self.url, localpart, password)


    def answers(self) -> bool:
        """Whether ``/_matrix/client/versions`` answers now.

        Raises :class:`SynapseError` (with the log's tail) if the process has exited.
        """
        if self.process is None or self.process.poll() is not None:
            status = None if self.process is None else self.process.returncode
            raise SynapseError(
                f"Synapse exited with status {status}; log {self.log_path}:\n"
                + _tail(self.log_path)
            )
        try:
            _request("GET", f"{self.url}/_matrix/client/versions", timeout=1)
        except OSError:
            return False
        return True

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until Synapse answers; stop it and raise :class:`SynapseError` if it does not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.answers():
                    return
            except SynapseError:
                self.stop()
                raise
            time.sleep(0.05)
        self.stop()
        raise SynapseError(f"Synapse did not answer within {timeout:g} s; log {self.log_path}:\n"
                           + _tail(self.log_path))


def register_user(url: str, localpart: str, password: str = "servletkit-pw-1") -> dict[str, Any]:
    """Register a user on the homeserver at ``url`` (one of these, whose registration is
    open: :class:`SynapseServer` or ``servletkit dev``'s); return the response
    (user_id, access_token)."""
    body = {"username": localpart, "password": password, "auth": {"type": "m.login.dummy"}}
    answer: dict[str, Any] = _request("POST", f"{url}/_matrix/client/v3/register", body)
    return answer


def launch_synapse(
    workdir: str | Path,
    *,
    port: int | None = None,
    server_name: str = "localhost",
    modules: Sequence[Mapping[str, Any]] = (),
    app_service_config_files: Sequence[str | Path] = (),
    extra_config: Mapping[str, Any] | None = None,
    python: str = sys.executable,
    pythonpath: Sequence[str | Path] = (),
    die_with_parent: bool = False,
) -> SynapseServer:
    """Write the config into ``workdir`` and start Synapse; return without waiting.

    ``port`` defaults to a free one. ``pythonpath`` is prepended to the child's
    ``PYTHONPATH`` (for modules not installed in ``python``'s environment).
    ``die_with_parent`` puts Synapse in its own session, so a Ctrl-C in the
    terminal reaches only the parent (which then stops it in order), and (on
    Linux) has the kernel SIGTERM it if the thread that launched it dies, so
    even a killed parent leaves no homeserver behind; launch from the main
    thread when you use it.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = homeserver_config(
        workdir, port, server_name=server_name, modules=modules,
        app_service_config_files=app_service_config_files, extra=extra_config,
    )
    config_path = workdir / "homeserver.yaml"
    # JSON is valid YAML; private: it holds the registration, macaroon and form secrets
    write_private(config_path, json.dumps(config, indent=2))
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(
            [*(str(p) for p in pythonpath), *filter(None, [env.get("PYTHONPATH")])]
        )
    server = SynapseServer(f"http://127.0.0.1:{port}", port, workdir, server_name, python, env,
                           die_with_parent)
    server.spawn()
    return server


def exit_with_parent(signum: int = signal.SIGTERM) -> None:
    """A ``preexec_fn`` (Linux): the kernel sends the child ``signum`` when the thread
    that launched it dies, so a killed parent leaves no server behind.

    It must run after any change of user (a change of credentials clears the
    setting), which ``subprocess.Popen`` does: ``user=`` is applied before
    ``preexec_fn``.
    """
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)


def dying_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """The ``preexec_fn`` that ties a child server to its parent with ``signum``
    (:func:`exit_with_parent`); ``None`` where prctl(2) does not exist (not Linux)."""
    if sys.platform != "linux":
        return None
    return functools.partial(exit_with_parent, signum)


def start_synapse(
    workdir: str | Path,
    *,
    timeout: float = 60.0,
    **options: Any,
) -> SynapseServer:
    """Write the config into ``workdir``, start Synapse, wait until it answers.

    ``options`` are those of :func:`launch_synapse`. Raises
    :class:`SynapseError` with the tail of the log if Synapse exits or does
    not answer within ``timeout`` seconds.
    """
    server = launch_synapse(workdir, **options)
    server.wait_ready(timeout)
    return server


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _request(
    method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 10
) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"{}")
