"""Whether a port the config names can be listened on: checked before starting, so a taken
port is one clear line naming the setting, not a traceback from deep in start-up."""

from __future__ import annotations

import socket

from servletkit.container.config import Config


def port_problem(host: str, port: int) -> str | None:
    """Why ``host``:``port`` cannot be listened on now, or ``None`` if it can."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def port_unavailable(config: Config, host: str, port: int, setting: str) -> str | None:
    """The message for a taken ``host``:``port``, else ``None``.

    ``setting`` is where the port came from: a key of ``config``'s file
    (``[server] port``) or a command-line option (``--port``).
    """
    if problem := port_problem(host, port):
        where = setting if setting.startswith("--") else f"{setting} in {config.path}"
        return (f"port {port} on {host} is not available ({problem}): stop the process "
                f"using it, or choose another {where}")
    return None
