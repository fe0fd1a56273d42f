"""How ``servletkit dev`` wires the container to its Synapse: the config both wires get,
the files Synapse loads, and the check that Synapse reaches the container."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import attrs
import httpx

from servletkit.container.config import AppserviceConfig, Config, Namespace, Namespaces
from servletkit.container.files import write_private
from servletkit.container.snippets import appservice_url, dump_yaml, registration, synapse_config
from servletkit.dev.errors import DevError
from servletkit.dev.state import DevPaths, DevState


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
    )


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
