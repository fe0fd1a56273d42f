"""What ``servletkit dev`` checks before it starts anything, and the ports it picks."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any, Final

from servletkit.container.config import Config
from servletkit.container.ports import port_problem, port_unavailable
from servletkit.container.runtime import Container
from servletkit.dev.embedded_synapse import free_port
from servletkit.dev.errors import DevError
from servletkit.dev.state import DevPaths, DevState

INSTALL_HINT: Final = "pip install 'servletkit[synapse]' (or run scripts/bootstrap)"


def check_synapse_installed() -> None:
    """Raise :class:`DevError` with the install command if Synapse cannot be imported."""
    if importlib.util.find_spec("synapse") is None:
        raise DevError(f"Synapse is not installed in this Python environment ({sys.executable}); "
                       f"install it with: {INSTALL_HINT}")


def require_port(config: Config, host: str, port: int, setting: str) -> None:
    """Raise :class:`DevError` naming the config ``setting`` if ``host``:``port`` is taken."""
    if message := port_unavailable(config, host, port, setting):
        raise DevError(message)


def choose_homeserver_port(config: Config, state: DevState) -> int:
    """``[dev] homeserver_port`` if set, else the port used last time if free, else a new one."""
    if config.dev.homeserver_port is not None:
        require_port(config, "127.0.0.1", config.dev.homeserver_port, "[dev] homeserver_port")
        return config.dev.homeserver_port
    if state.homeserver_port is not None and not port_problem("127.0.0.1", state.homeserver_port):
        return state.homeserver_port
    return free_port()


def policy_facts(config: Config) -> dict[str, Any] | None:
    """What dev.json says about the policy server, or ``None`` without a [policy] section."""
    policy = config.policy
    if policy is None:
        return None
    return {"server_name": policy.server_name, "url": f"https://{policy.host}:{policy.port}",
            "state_dir": str(config.resolve(policy.state_dir))}


def choose_policy_port(config: Config, state: DevState) -> int:
    """The file's ``[policy] port`` if it has a section, else the port used last time if
    free (the policy server's name includes it), else a new one."""
    if config.policy is not None:
        return config.policy.port
    if state.policy_port is not None and not port_problem("127.0.0.1", state.policy_port):
        return state.policy_port
    return free_port()


def plugin_failures(container: Container) -> DevError | None:
    """One :class:`DevError` describing every plugin that failed to load, or ``None``."""
    if not container.errors:
        return None
    lines = [f"plugin {error.plugin!r} failed to {error.stage}: {error.message}"
             for error in container.errors]
    tables = " and ".join(sorted({f"[plugins.{error.plugin}]" for error in container.errors}))
    log_file = DevPaths.for_config(container.config).container_log
    lines.append(f"fix: repair the plugin (its traceback is in {log_file}), or switch it off "
                 f"with enabled = false in {tables} of {container.config.path}")
    return DevError("\n".join(lines))
