"""How ``servletkit dev`` wires the container to its Synapse: the config both wires get,
the files Synapse loads, and the check that Synapse reaches the container."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import attrs
import httpx

from servletkit.container.config import (
    AppserviceConfig,
    Config,
    Namespace,
    Namespaces,
    PolicyConfig,
)
from servletkit.container.snippets import appservice_url, dump_yaml, registration, synapse_config
from servletkit.dev.errors import DevError
from servletkit.dev.state import DevPaths, DevState
from servletkit.files import write_private


def wired_config(config: Config, state: DevState, paths: DevPaths, homeserver_url: str) -> Config:
    """``config`` pointed at the dev homeserver, with both wires on and the generated secrets.

    The file's ``[appservice]`` and ``[module]`` settings are kept except the
    secrets (the dev homeserver has its own) and ``[appservice] url`` (derived
    from ``[server]``). Without an ``[appservice]`` section the appservice is
    interested in every room, so observers see every stored event. The store
    moves into the state folder: the transaction ids it remembers belong to
    this homeserver.
    """
    appservice = config.appservice or AppserviceConfig(
        as_token=state.as_token, hs_token=state.hs_token,
        namespaces=Namespaces(rooms=(Namespace(".*"),)),
    )
    return attrs.evolve(
        config,
        homeserver=attrs.evolve(config.homeserver, url=homeserver_url),
        appservice=attrs.evolve(appservice, as_token=state.as_token, hs_token=state.hs_token,
                                url=None),
        module=attrs.evolve(config.module, enabled=True, secret=state.module_secret),
        store=attrs.evolve(config.store, path=str(paths.root / "servletkit.db")),
        policy=dev_policy(config, state, paths, homeserver_url),
    )


SYNAPSE_LOOPBACK_FEDERATION: dict[str, Any] = {
    # the dev policy server is an IP literal with a self-signed certificate on loopback;
    # Synapse checks only its blocklist for IP literals (reference §7.14)
    "federation_verify_certificates": False,
    "federation_ip_range_blacklist": [],
    "ip_range_blacklist": [],
}
"""What the dev Synapse needs to federate with the dev policy server."""


def dev_policy(config: Config, state: DevState, paths: DevPaths,
               homeserver_url: str) -> PolicyConfig | None:
    """The policy wire of ``servletkit dev``: the file's ``[policy]`` if it has one, else
    ``127.0.0.1:<policy_port>`` with its keys in the state folder (none before a port
    is chosen); either way it reaches the dev homeserver by its URL."""
    if config.policy is None and state.policy_port is None:
        return None
    policy = config.policy or PolicyConfig(
        # (state.policy_port is set: checked above)
        server_name=f"127.0.0.1:{state.policy_port}", port=state.policy_port or 8448,
        state_dir=str(paths.root / "policy"))
    server_urls = {**policy.server_urls, config.homeserver.server_name: homeserver_url}
    return attrs.evolve(policy, server_urls=server_urls)


def synapse_wiring(config: Config, paths: DevPaths) -> dict[str, Any]:
    """Write the appservice registration; return the homeserver.yaml keys of every wire."""
    write_private(paths.registration, dump_yaml(registration(config)))
    return synapse_config(config, paths.registration)


async def ping_appservice(config: Config) -> None:
    """Have Synapse ping the container's appservice (``/_matrix/client/v1/appservice/.../ping``).

    Raises :class:`DevError` if Synapse cannot reach it.
    """
    appservice = config.appservice
    assert appservice is not None  # wired_config always sets it
    url = (f"{config.homeserver.url}/_matrix/client/v1/appservice/"
           f"{quote(appservice.id, safe='')}/ping")
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(url, json={"transaction_id": "servletkit-dev"},
                                     headers={"Authorization": f"Bearer {appservice.as_token}"})
    if response.status_code != 200:
        raise DevError(f"Synapse cannot reach the container's appservice at "
                       f"{appservice_url(config)}: {response.status_code} {response.text}; "
                       f"check [server] in {config.path}")
