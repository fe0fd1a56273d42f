"""What the homeserver needs to know about the container: the appservice registration
and the snippet for Synapse's ``homeserver.yaml`` (the module wire's ``modules:`` entry
among it), printed by the CLI beside this module.

Both are built as plain dicts (so tests and other wires can use and extend
them) and printed as YAML by ``servletkit registration`` and ``servletkit
synapse-config``. A wire that needs more in ``homeserver.yaml`` appends a
function to :data:`SYNAPSE_SNIPPETS`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import yaml

from servletkit.container.config import AppserviceConfig, Config, ModuleCallbacks
from servletkit.container.config_tables import ConfigError

DEFAULT_REGISTRATION_FILE = "appservice-registration.yaml"


def _appservice(config: Config) -> AppserviceConfig:
    if config.appservice is None:
        raise ConfigError(config.path, "appservice",
                          "is missing: add an [appservice] section with as_token and hs_token")
    return config.appservice


def appservice_url(config: Config) -> str:
    """How the homeserver reaches the container: ``[appservice] url``, else from ``[server]``."""
    appservice = _appservice(config)
    if appservice.url is not None:
        return appservice.url.rstrip("/")
    host = config.server.host
    if host in ("0.0.0.0", "::", ""):  # listening everywhere: loopback reaches it
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.server.port}"


def registration(config: Config) -> dict[str, Any]:
    """The appservice registration for the homeserver (its ``app_service_config_files``)."""
    appservice = _appservice(config)
    namespaces = appservice.namespaces
    data: dict[str, Any] = {
        "id": appservice.id,
        "url": appservice_url(config),
        "as_token": appservice.as_token,
        "hs_token": appservice.hs_token,
        "sender_localpart": appservice.sender_localpart,
        "rate_limited": appservice.rate_limited,
        "receive_ephemeral": appservice.receive_ephemeral,
        "namespaces": {
            kind: [{"regex": ns.regex, "exclusive": ns.exclusive}
                   for ns in getattr(namespaces, kind)]
            for kind in ("users", "aliases", "rooms")
        },
    }
    if appservice.protocols:
        data["protocols"] = list(appservice.protocols)
    return data


def appservice_snippet(config: Config, registration_file: Path) -> dict[str, Any]:
    """``homeserver.yaml`` keys for the appservice wire (none without ``[appservice]``)."""
    if config.appservice is None:
        return {}
    snippet: dict[str, Any] = {"app_service_config_files": [str(registration_file)]}
    if config.appservice.receive_ephemeral:
        # Synapse pushes typing/receipts/presence with receive_ephemeral alone (1.156+);
        # to-device messages also need this experimental flag.
        snippet["experimental_features"] = {"msc2409_to_device_messages_enabled": True}
    return snippet


def module_entry(config: Config) -> dict[str, Any]:
    """The ``modules:`` entry of homeserver.yaml that connects Synapse to this container.

    Raises :class:`ConfigError` when ``[module]`` is not enabled.
    """
    settings = config.module
    if not settings.enabled:
        raise ConfigError(config.path, "module.enabled",
                          "the module wire is off; set [module] enabled = true and a "
                          "secret to print its Synapse config")
    module_config: dict[str, Any] = (
        {"containers": list(settings.containers)} if settings.containers
        else {"host": settings.host, "port": settings.port})
    module_config["secret"] = settings.secret
    callbacks = {}
    for field in attrs.fields(ModuleCallbacks):
        policy = getattr(settings.callbacks, field.name)
        chosen = {key: value for key, value in attrs.asdict(policy).items() if value is not None}
        if chosen:
            callbacks[field.name] = chosen
    if callbacks:
        module_config["callbacks"] = callbacks
    return {"module": "servletkit.synapse.ServletkitModule", "config": module_config}


def module_snippet(config: Config, registration_file: Path) -> dict[str, Any]:
    """``homeserver.yaml`` keys for the module wire (none unless ``[module] enabled``).

    One of :data:`SYNAPSE_SNIPPETS`; ``registration_file`` is not used by this wire.
    """
    return {"modules": [module_entry(config)]} if config.module.enabled else {}


SynapseSnippet = Callable[[Config, Path], dict[str, Any]]

SYNAPSE_SNIPPETS: list[SynapseSnippet] = [appservice_snippet, module_snippet]
"""Each wire's contribution to ``homeserver.yaml``, merged in order by :func:`synapse_config`."""


def synapse_config(config: Config, registration_file: Path) -> dict[str, Any]:
    """The keys to add to Synapse's ``homeserver.yaml``; lists and tables are merged.

    Raises :class:`ConfigError` when the config connects no wire to Synapse.
    """
    merged: dict[str, Any] = {}
    for snippet in SYNAPSE_SNIPPETS:
        for key, value in snippet(config, registration_file).items():
            if isinstance(value, list):
                merged.setdefault(key, []).extend(value)
            elif isinstance(value, dict):
                merged.setdefault(key, {}).update(value)
            else:
                merged[key] = value
    if not merged:
        raise ConfigError(config.path, "", "connects no wire to Synapse: add an [appservice] "
                          "section with as_token and hs_token, or set [module] enabled = true "
                          "and a secret")
    return merged


def dump_yaml(data: dict[str, Any]) -> str:
    """``data`` as block-style YAML, keys in the order given."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
