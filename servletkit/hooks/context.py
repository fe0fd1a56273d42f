"""What a plugin gets from the container: its :class:`PluginContext`, passed to every hook.

Part of the public plugin API (``from servletkit import PluginContext``), so a
plugin can type its hooks::

    from servletkit import PluginContext, hookimpl

    @hookimpl
    async def servlet_init(context: PluginContext) -> None:
        context.log.info("limit is %s", context.config.get("limit", 3))
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs

if TYPE_CHECKING:  # the container's classes, named for type checkers only
    from servletkit.store import PluginStore
    from servletkit.wires.appservice.homeserver import HomeserverClient

PLUGIN_LOGGER_PREFIX: Final = "servletkit.plugins."
"""A plugin's ``context.log`` is the logger of this prefix and its name."""


@attrs.frozen
class PolicyServerInfo:
    """This container as a policy server (MSC4284), as ``context.policy`` tells plugins:
    what a room's ``m.room.policy`` state must hold to name it.

    ``server_name``
        the policy wire's server name (``[policy] server_name``).
    ``public_key``
        its policy key, unpadded base64 ed25519.
    ``user_id``
        the user that joins the rooms it serves (``@policy:SERVER_NAME``); invite it,
        and the policy wire joins by itself.
    """

    server_name: str
    public_key: str
    user_id: str

    def state_content(self) -> dict[str, Any]:
        """The ``m.room.policy`` content (state key ``""``) that names this policy server."""
        return {"via": self.server_name, "public_keys": {"ed25519": self.public_key}}


@attrs.frozen
class PluginContext:
    """One plugin's view of the container, passed to every hook as ``context``.

    ``name``
        the plugin's name (its entry-point name).
    ``config``
        its own ``[plugins.NAME]`` table without the container's keys
        (``enabled``, ``order``, ``timeout_ms``, ``on_error``); read-only.
    ``log``
        a logger named ``servletkit.plugins.NAME`` (shown in ``servletkit dev``'s
        terminal).
    ``homeserver``
        acts in Matrix as the appservice's user or, with ``as_user``, one of its
        virtual users (:class:`~servletkit.wires.appservice.homeserver.HomeserverClient`);
        ``None`` when the config has no ``[appservice]`` section.
    ``store``
        the plugin's own durable key/value data
        (:class:`~servletkit.store.PluginStore`): what must survive a restart
        (or, later, a reload) goes here, not in module globals. Its methods
        are awaited, whichever store backs it: ``await context.store.get(key,
        default)``, ``await context.store.put(key, value)`` (any JSON value),
        ``await context.store.delete(key)``, ``await context.store.items(prefix)``.
        ``await context.store.singleton(name, work)`` runs ``work()`` on one
        container instance only when several share a database (docs/plugins.md).
        Writes made while the appservice wire handles a transaction become
        durable with it (see :func:`~servletkit.hooks.specs.on_stored_event`).
    ``policy``
        this container as a policy server (:class:`PolicyServerInfo`: what to put in
        a room's ``m.room.policy``); ``None`` when the config has no ``[policy]``
        section.
    """

    name: str
    config: Mapping[str, Any]
    log: logging.Logger
    homeserver: HomeserverClient | None = None
    store: PluginStore | None = None
    policy: PolicyServerInfo | None = None

    @classmethod
    def create(
        cls,
        name: str,
        config: Mapping[str, Any],
        homeserver: HomeserverClient | None = None,
        *,
        store: PluginStore | None = None,
        policy: PolicyServerInfo | None = None,
    ) -> PluginContext:
        """The context of plugin ``name`` with its own config table."""
        return cls(name=name, config=config, log=logging.getLogger(PLUGIN_LOGGER_PREFIX + name),
                   homeserver=homeserver, store=store, policy=policy)
