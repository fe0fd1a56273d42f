"""The running container: plugins loaded from the config, their contexts, the dispatcher."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable
from typing import Any

import attrs

from servletkit.container.config import Config, ConfigError, PluginSettings
from servletkit.container.plugins import (
    PluginError,
    PluginRejected,
    PluginSource,
    describe_failure,
    implemented_hooks,
    installed_plugins,
    new_plugin_manager,
    register,
    sources_for,
)
from servletkit.hooks.context import PluginContext
from servletkit.hooks.dispatcher import Dispatcher, PluginPolicy, await_me_maybe, iter_plugin_impls
from servletkit.hooks.specs import HOOKS
from servletkit.hooks.table import HookTable
from servletkit.store import PluginStore, Store, store_from_config
from servletkit.wires.appservice.homeserver import HomeserverClient

log = logging.getLogger("servletkit.container")


@attrs.frozen
class PluginStatus:
    """What the container knows about one plugin (a row of ``servletkit plugins``)."""

    name: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]
    enabled: bool
    order: int
    loaded: bool
    live: bool
    error: PluginError | None = None


def homeserver_client(config: Config) -> HomeserverClient | None:
    """The client plugins share as ``context.homeserver``; ``None`` without ``[appservice]``."""
    if config.appservice is None:
        return None
    return HomeserverClient(config.homeserver.url, config.appservice.as_token,
                            config.homeserver.server_name, config.appservice.sender_localpart)


class Container:
    """Plugins loaded according to a :class:`Config`, with a dispatcher over the live ones.

    ``extra_plugins`` are plugin sources handed in directly (tests, embedding)
    in addition to the installed entry points (which ``include_installed=False``
    leaves out). ``hooks`` is the hook table (default: :data:`specs.HOOKS`; a
    test may extend it). Nothing happens at construction;
    :meth:`load` imports and registers, :meth:`start` runs ``servlet_init``,
    :meth:`stop` runs ``servlet_destroy``.
    """

    def __init__(
        self,
        config: Config,
        extra_plugins: Iterable[PluginSource] = (),
        *,
        include_installed: bool = True,
        store: Store | None = None,
        hooks: HookTable = HOOKS,
    ) -> None:
        self.config = config
        self.hooks = hooks
        self._include_installed = include_installed
        self.store: Store = store or store_from_config(config)
        self.pm = new_plugin_manager(hooks)
        self.dispatcher = Dispatcher(self.pm, hooks)
        self.errors: list[PluginError] = []
        self._extra = tuple(extra_plugins)
        self._sources: dict[str, PluginSource] = {}
        self._objects: dict[str, Any] = {}
        self._contexts: dict[str, PluginContext] = {}
        self._live: set[str] = set()
        self.homeserver = homeserver_client(config)
        self.ready = asyncio.Event()
        """Set once :meth:`start` has run every ``servlet_init``: the wires listen before
        that, and hold what needs the plugins until it is set."""

    # -- loading -------------------------------------------------------------

    def load(self) -> None:
        """Find the plugins, check the config names only installed ones, import the enabled.

        Raises :class:`ConfigError` if a ``[plugins.NAME]`` table names a plugin
        that is not installed. A plugin that fails to import or register is
        recorded in :attr:`errors` and the others load.
        """
        installed = installed_plugins() if self._include_installed else {}
        self._sources = sources_for(installed, self._extra)
        for table in self.config.plugins:
            if table.name not in self._sources:
                available = ", ".join(sorted(self._sources)) or "none"
                raise ConfigError(
                    self.config.path,
                    f"plugins.{table.name}",
                    f"no installed plugin is called {table.name!r} (installed: {available}); "
                    f"install its package, or remove the table",
                )
        for name in self._sources:
            if not self.settings(name).enabled:
                continue
            try:
                self._objects[name] = register(self.pm, self._sources[name])
            except PluginRejected as exc:  # imported, but its hooks do not fit the specs
                self._fail(describe_failure(name, "register", exc))
                continue
            except Exception as exc:
                self._fail(describe_failure(name, "import", exc))
                continue
            own = self.config.plugin(name)
            self._contexts[name] = self.make_context(name, own.options if own else {})

    def make_context(self, name: str, options: Any) -> PluginContext:
        """The context handed to plugin ``name``'s hooks (wires extend what it carries)."""
        return PluginContext.create(name, options, self.homeserver,
                                    store=PluginStore(self.store, name))

    def settings(self, name: str) -> PluginSettings:
        """The container's settings for plugin ``name`` (defaults when it has no table)."""
        table = self.config.plugin(name)
        return table.settings if table else PluginSettings()

    def policy(self, name: str) -> PluginPolicy:
        """The dispatcher policy of plugin ``name``: order, config position, budget, on_error."""
        table = self.config.plugin(name)
        settings = self.settings(name)
        # plugins without a table come after those with one, by name
        position = table.position if table else len(self.config.plugins) + sorted(
            self._sources
        ).index(name)
        return PluginPolicy(settings.order, position, settings.timeout_ms, settings.on_error)

    def is_own_user(self, user_id: str) -> bool:
        """Whether ``user_id`` is the appservice's: its sender or in its users namespace.

        The plugins act in Matrix as these users (``context.homeserver``).
        """
        appservice = self.config.appservice
        if appservice is None:
            return False
        sender = f"@{appservice.sender_localpart}:{self.config.homeserver.server_name}"
        return user_id == sender or any(
            re.match(namespace.regex, user_id) for namespace in appservice.namespaces.users)

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Open the store, run ``servlet_init`` for each loaded plugin; the ones that fail
        are unloaded."""
        # the app opened it already, before its wires listen; a container started
        # without the app (servletkit.testing, `servletkit plugins`) is opened here
        await self.store.open()
        for name in list(self._objects):
            try:
                for init in iter_plugin_impls(self.pm, "servlet_init", name):
                    await await_me_maybe(init(self._contexts[name]))
            except Exception as exc:
                self._fail(describe_failure(name, "init", exc))
                self.pm.unregister(self._objects.pop(name))
                continue
            self._live.add(name)
        self._rebuild()
        self.ready.set()

    async def stop(self) -> None:
        """Stop dispatching, run ``servlet_destroy``, close the client and the store."""
        live, self._live = self._live, set()
        self._rebuild()
        for name in sorted(live):
            try:
                for destroy in iter_plugin_impls(self.pm, "servlet_destroy", name):
                    await await_me_maybe(destroy(self._contexts[name]))
            except Exception as exc:
                self._fail(describe_failure(name, "destroy", exc))
        if self.homeserver is not None:
            await self.homeserver.aclose()
        await self.store.close()

    def _rebuild(self) -> None:
        self.dispatcher.rebuild(
            {name: (self.policy(name), self._contexts[name]) for name in self._live}
        )

    def _fail(self, error: PluginError) -> None:
        self.errors.append(error)
        log.error("plugin %r failed to %s: %s\n%s", error.plugin, error.stage, error.message,
                  error.traceback)

    # -- reporting -----------------------------------------------------------

    def statuses(self) -> list[PluginStatus]:
        """One row per known plugin, in dispatch order (config order, then name)."""
        errors = {error.plugin: error for error in self.errors}
        rows = []
        for name, source in self._sources.items():
            obj = self._objects.get(name)
            settings = self.settings(name)
            rows.append(
                PluginStatus(
                    name=name,
                    distribution=source.distribution,
                    version=source.version,
                    hooks=tuple(implemented_hooks(self.pm, obj)) if obj is not None else (),
                    enabled=settings.enabled,
                    order=settings.order,
                    loaded=obj is not None,
                    live=name in self._live,
                    error=errors.get(name),
                )
            )
        rows.sort(key=lambda row: (row.order, self.policy(row.name).position))
        return rows

    @property
    def live_plugins(self) -> list[str]:
        """Names of the plugins currently receiving events."""
        return sorted(self._live)
