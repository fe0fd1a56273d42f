"""What a plugin gets from the container: its :class:`PluginContext`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import attrs

from servletkit.container.homeserver import HomeserverClient
from servletkit.container.store import PluginStore


@attrs.frozen
class PluginContext:
    """One plugin's view of the container, passed to every hook as ``context``.

    ``name`` is the plugin's name (its entry-point name); ``config`` is its own
    ``[plugins.NAME]`` table without the container's keys (read-only); ``log``
    is a logger named ``servletkit.plugins.NAME``. ``homeserver`` acts in
    Matrix as the appservice's user or, with ``as_user``, one of its virtual
    users; it is ``None`` when the config has no ``[appservice]`` section.
    ``store`` is the plugin's own durable key/value data
    (:class:`~servletkit.container.store.PluginStore`).
    """

    name: str
    config: Mapping[str, Any]
    log: logging.Logger
    homeserver: HomeserverClient | None = None
    store: PluginStore | None = None

    @classmethod
    def create(
        cls,
        name: str,
        config: Mapping[str, Any],
        homeserver: HomeserverClient | None = None,
        *,
        store: PluginStore | None = None,
    ) -> PluginContext:
        """The context of plugin ``name`` with its own config table."""
        return cls(name=name, config=config, log=logging.getLogger(f"servletkit.plugins.{name}"),
                   homeserver=homeserver, store=store)
