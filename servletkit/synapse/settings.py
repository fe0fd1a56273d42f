"""The module's config (the ``config:`` of its ``modules:`` entry in homeserver.yaml).

``servletkit synapse-config`` prints a working one. Keys:

``host`` (default ``"127.0.0.1"``), ``port`` (default ``8091``)
    where the container's module-wire listener is (``[module]`` host/port).
``containers`` (instead of ``host`` and ``port``)
    several container instances on one database (docs/deploy.md), a list of
    ``"host:port"`` module-wire addresses: requests are spread over the connected
    ones, and a request whose instance is down or drops the connection goes to
    the next one within the callback's budget.
``secret`` (required)
    the shared secret, ``[module] secret`` in servletkit.toml.
``callbacks`` (optional)
    per Synapse callback, ``timeout_ms`` (the time budget for the container's
    answer, connection wait included) and ``fail_open`` (what happens when the
    container is down, too slow, or answers garbage: ``true`` lets the action
    through, ``false`` refuses it). Defaults: :data:`DEFAULT_POLICIES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs

from servletkit.hooks.specs import HOOKS


class SettingsError(ValueError):
    """The module config is wrong; the message names the key and the fix."""


@attrs.frozen
class CallbackPolicy:
    """One callback's time budget and failure policy."""

    timeout_ms: float
    fail_open: bool

    @property
    def timeout_s(self) -> float:
        """The budget in seconds."""
        return self.timeout_ms / 1000.0


DEFAULT_TIMEOUT_MS: Final = 2000.0

DEFAULT_POLICIES: Final = {
    name: CallbackPolicy(DEFAULT_TIMEOUT_MS, callback.fail_open)
    for name, (_, callback) in HOOKS.synapse_callbacks.items()
}
"""The defaults: 2 s budget each; fail closed (refuse) except where the hook table
(:mod:`servletkit.hooks.specs`) says ``fail_open`` (``check_event_for_spam``).

A moderation deployment expects nothing unchecked to get in while the
container is away, so local sends, joins, invites, room creation and logins
are refused (HTTP 503, ``M_UNKNOWN``: the client may retry; nothing is lost).
``check_event_for_spam`` only sees events from other servers here, and
refusing one soft-fails and redacts it for good, so it fails open (as
``synapse-http-antispam`` does).
"""


@attrs.frozen
class ModuleSettings:
    """The parsed module config."""

    secret: str = attrs.field(repr=False)
    host: str = "127.0.0.1"
    port: int = 8091
    policies: Mapping[str, CallbackPolicy] = attrs.field(factory=lambda: dict(DEFAULT_POLICIES))
    containers: tuple[tuple[str, int], ...] = ()
    """``containers``' addresses; empty means the one at ``host``:``port``."""

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """Every container instance's module-wire address, in the configured order."""
        return self.containers or ((self.host, self.port),)


_KEYS: Final = ("host", "port", "containers", "secret", "callbacks")
_POLICY_KEYS: Final = ("timeout_ms", "fail_open")


def parse_settings(config: Any) -> ModuleSettings:
    """Validate the module config; raise :class:`SettingsError` naming the bad key."""
    if not isinstance(config, Mapping):
        raise SettingsError(f"config: must be a mapping, got {type(config).__name__}")
    for key in config:
        if key not in _KEYS:
            raise SettingsError(f"config.{key}: unknown key (known keys: {', '.join(_KEYS)})")
    secret = config.get("secret")
    if not isinstance(secret, str) or not secret:
        raise SettingsError("config.secret: required, the [module] secret of servletkit.toml "
                            "(`servletkit synapse-config` prints it)")
    host = config.get("host", "127.0.0.1")
    if not isinstance(host, str):
        raise SettingsError(f"config.host: must be a string, got {type(host).__name__}")
    port = _port("config.port", config.get("port", 8091))
    containers = _parse_containers(config)
    return ModuleSettings(secret, host, port, _parse_policies(config.get("callbacks", {})),
                          containers)


def _port(key: str, port: Any) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise SettingsError(f"{key}: must be a TCP port number, got {port!r}")
    return port


def _parse_containers(config: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    if "containers" not in config:
        return ()
    if "host" in config or "port" in config:
        raise SettingsError("config.containers: give either containers or host and port, "
                            "not both (put every instance in containers)")
    entries = config["containers"]
    if not isinstance(entries, list) or not entries:
        raise SettingsError('config.containers: must be a non-empty list of "host:port" '
                            f"strings, got {entries!r:.200}")
    addresses = []
    for index, entry in enumerate(entries):
        key = f"config.containers[{index}]"
        host, sep, port = entry.rpartition(":") if isinstance(entry, str) else ("", "", "")
        if not sep or not host or not port.isdigit():
            raise SettingsError(f'{key}: must be "host:port", got {entry!r:.200}')
        addresses.append((host, _port(key, int(port))))
    if len(set(addresses)) != len(addresses):
        raise SettingsError(f"config.containers: an address is listed twice: {entries!r:.300}")
    return tuple(addresses)


def _parse_policies(table: Any) -> dict[str, CallbackPolicy]:
    if not isinstance(table, Mapping):
        raise SettingsError(f"config.callbacks: must be a mapping, got {type(table).__name__}")
    policies = dict(DEFAULT_POLICIES)
    for name, entry in table.items():
        key = f"config.callbacks.{name}"
        if name not in DEFAULT_POLICIES:
            raise SettingsError(f"{key}: unknown callback (known: {', '.join(DEFAULT_POLICIES)})")
        if not isinstance(entry, Mapping):
            raise SettingsError(f"{key}: must be a mapping, got {type(entry).__name__}")
        for field in entry:
            if field not in _POLICY_KEYS:
                raise SettingsError(f"{key}.{field}: unknown key (known keys: timeout_ms, "
                                    "fail_open)")
        timeout_ms = entry.get("timeout_ms", policies[name].timeout_ms)
        if (not isinstance(timeout_ms, int | float) or isinstance(timeout_ms, bool)
                or timeout_ms <= 0):
            raise SettingsError(f"{key}.timeout_ms: must be a positive number, "
                                f"got {timeout_ms!r}")
        fail_open = entry.get("fail_open", policies[name].fail_open)
        if not isinstance(fail_open, bool):
            raise SettingsError(f"{key}.fail_open: must be true or false, got {fail_open!r}")
        policies[name] = CallbackPolicy(float(timeout_ms), fail_open)
    return policies
