"""The running container: plugins loaded from the config, their contexts, the dispatcher."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable
from typing import Any, Final

import attrs

from servletkit.container.config import Config, PluginSettings, load_config
from servletkit.container.config_tables import ConfigError
from servletkit.container.plugin_routes import PluginRoutes, routes_app
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
from servletkit.container.versions import (
    PluginStatus,
    PluginVersion,
    ReloadResult,
    UnloadResult,
    canonical_name,
    fresh_source,
    invalidate_caches,
    module_of,
    purge_modules,
    restore_modules,
)
from servletkit.hooks.context import PluginContext
from servletkit.hooks.dispatcher import (
    Chain,
    Dispatcher,
    PluginPolicy,
    await_me_maybe,
    iter_plugin_impls,
)
from servletkit.hooks.specs import HOOKS
from servletkit.hooks.table import HookTable
from servletkit.store import PluginStore, Store, store_from_config
from servletkit.wires.appservice.homeserver import HomeserverClient
from servletkit.wires.policy.join import server_info
from servletkit.wires.policy.keys import load_keys

log = logging.getLogger("servletkit.container")

DRAIN_TIMEOUT_S: Final = 30.0
"""How long a replaced plugin version may finish its calls before it is destroyed anyway."""

INIT_TIMEOUT_S: Final = 30.0
"""How long a reloaded version's ``servlet_init`` may take before the reload fails."""


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
    :meth:`reload` replaces one plugin while the others serve, :meth:`stop` runs
    ``servlet_destroy``. ``drain_timeout_s`` bounds how long a replaced version
    may finish its calls before it is destroyed anyway.
    """

    def __init__(
        self,
        config: Config,
        extra_plugins: Iterable[PluginSource] = (),
        *,
        include_installed: bool = True,
        store: Store | None = None,
        hooks: HookTable = HOOKS,
        drain_timeout_s: float = DRAIN_TIMEOUT_S,
    ) -> None:
        self.config = config
        self.hooks = hooks
        self._include_installed = include_installed
        self.store: Store = store or store_from_config(config)
        self.pm = new_plugin_manager(hooks)
        self.dispatcher = Dispatcher(self.pm, hooks, rebuilt=self._track_chains)
        self.errors: list[PluginError] = []
        self._extra = tuple(extra_plugins)
        self._sources: dict[str, PluginSource] = {}
        self._versions: dict[str, PluginVersion] = {}  # the current version of each loaded
        self._loads: dict[str, int] = {}  # how often each plugin was loaded
        self._live: set[str] = set()
        self._retiring: list[PluginVersion] = []  # replaced, draining, not yet destroyed
        self._drains: set[asyncio.Task[None]] = set()
        self._reloading: asyncio.Lock | None = None
        self.drain_timeout_s = drain_timeout_s
        self.homeserver = homeserver_client(config)
        self.policy_server = None if config.policy is None else server_info(
            config.policy.server_name, load_keys(config.resolve(config.policy.state_dir)))
        """What plugins see as ``context.policy`` (the policy wire's name and key)."""
        self.ready = asyncio.Event()
        """Set once :meth:`start` has run every ``servlet_init``: the wires listen before
        that, and hold what needs the plugins until it is set."""
        self.http = PluginRoutes(self.ready)
        """The live plugins' own HTTP routes (``servlet_routes``), mounted by the app."""

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
                self._versions[name] = self._register(self._sources[name])
            except PluginRejected as exc:  # imported, but its hooks do not fit the specs
                self._fail(describe_failure(name, "register", exc))
            except Exception as exc:
                self._fail(describe_failure(name, "import", exc))

    def _register(self, source: PluginSource) -> PluginVersion:
        """Import and register the next version of ``source``'s plugin (not yet live)."""
        name = source.name
        number = self._loads.get(name, 0) + 1
        as_name = name if number == 1 else f"{name}@{number}"
        obj = register(self.pm, source, as_name=as_name)
        self._loads[name] = number
        own = self.config.plugin(name)
        return PluginVersion(name, number, source, obj,
                             self.make_context(name, own.options if own else {}))

    def make_context(self, name: str, options: Any) -> PluginContext:
        """The context handed to plugin ``name``'s hooks (wires extend what it carries)."""
        return PluginContext.create(name, options, self.homeserver,
                                    store=PluginStore(self.store, name),
                                    policy=self.policy_server)

    def settings(self, name: str) -> PluginSettings:
        """The container's settings for plugin ``name`` (defaults when it has no table)."""
        table = self.config.plugin(name)
        return table.settings if table else PluginSettings()

    def policy(self, name: str) -> PluginPolicy:
        """The dispatcher policy of plugin ``name``: order, config position, budget,
        on_error, threaded."""
        table = self.config.plugin(name)
        settings = self.settings(name)
        # plugins without a table come after those with one, by name
        position = table.position if table else len(self.config.plugins) + sorted(
            self._sources
        ).index(name)
        return PluginPolicy(settings.order, position, settings.timeout_ms, settings.on_error,
                            settings.threaded)

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
        self.dispatcher.start_guard()
        for name, version in list(self._versions.items()):
            if error := await self._bring_up(version):
                self._fail(error)
                del self._versions[name]
                continue
            self._live.add(name)
        self._rebuild()
        self.ready.set()

    async def stop(self) -> None:
        """Stop dispatching, run ``servlet_destroy``, close the client and the store.

        Versions replaced by a reload and still draining are destroyed first.
        """
        live, self._live = self._live, set()
        self._rebuild()
        if self._drains:
            await asyncio.gather(*self._drains, return_exceptions=True)
        for name in sorted(live):
            await self._destroy(self._versions[name])
        self.dispatcher.close()
        if self.homeserver is not None:
            await self.homeserver.aclose()
        await self.store.close()

    async def _lifecycle(self, version: PluginVersion, hook: str) -> None:
        for call in iter_plugin_impls(self.pm, hook, version.registered_as):
            await await_me_maybe(call(version.context))

    async def _bring_up(self, version: PluginVersion,
                        init_budget_s: float | None = None) -> PluginError | None:
        """Run ``servlet_init`` (within ``init_budget_s``) then ``servlet_routes`` of ``version``;
        on failure undo what ran (destroy it if its init did) and return the error."""
        stage = "init"
        try:
            await asyncio.wait_for(self._lifecycle(version, "servlet_init"), init_budget_s)
            stage = "routes"
            for call in iter_plugin_impls(self.pm, "servlet_routes", version.registered_as):
                answer = await await_me_maybe(call(version.context))
                version.http = routes_app(version.name, answer)
        except Exception as exc:
            if stage == "routes":
                await self._destroy(version)
            else:
                self.pm.unregister(version.obj)
            return describe_failure(version.name, stage, exc)
        return None

    async def _destroy(self, version: PluginVersion) -> None:
        """Run ``servlet_destroy`` of ``version`` (once) and unregister it."""
        if version.destroyed:
            return
        version.destroyed = True
        try:
            await self._lifecycle(version, "servlet_destroy")
        except Exception as exc:
            self._fail(describe_failure(version.name, "destroy", exc))
        finally:
            if self.pm.is_registered(version.obj):
                self.pm.unregister(version.obj)

    def _rebuild(self) -> None:
        live = [self._versions[name] for name in self._live]
        self.dispatcher.rebuild(
            {v.registered_as: (self.policy(v.name), v.context) for v in live},
            {v.registered_as: v.name for v in live},
        )
        self.http.update({v.name: v for v in live})

    def _track_chains(self, chains: list[Chain]) -> None:
        """Fold the figures of chains just replaced into each version's totals."""
        live = [self._versions[name] for name in self._live]
        for version in [*live, *self._retiring]:
            version.forget_drained(chains, self.dispatcher.in_flight(version.registered_as))
        for version in live:
            version.note_chains(chains)

    # -- reload --------------------------------------------------------------

    async def reload(self, name: str) -> ReloadResult:
        """Import plugin ``name`` afresh and swap the new version in; never raises for it.

        The plugin's modules are purged and imported again beside the old
        version's, registered and ``servlet_init``-ed; then the chains are rebuilt
        at once, so new calls go to the new version while calls in flight finish
        on the old one, which is destroyed in the background once they have
        drained (or after :attr:`drain_timeout_s`; :meth:`drained` waits for it).
        If the new version fails to import, register or init, the old one keeps
        serving, its modules are put back, and the result carries the error.
        A plugin that was not loaded (it failed, or is newly installed) is loaded.
        One reload runs at a time.
        """
        if self._reloading is None:
            self._reloading = asyncio.Lock()
        async with self._reloading:
            return await self._reload(name)

    async def _reload(self, name: str) -> ReloadResult:
        started = time.perf_counter()
        old = self._versions.get(name)
        label = old.label if old else None

        def failed(stage: str, exc: BaseException | str | PluginError) -> ReloadResult:
            error = (exc if isinstance(exc, PluginError)
                     else describe_failure(name, stage, exc) if isinstance(exc, BaseException)
                     else PluginError(name, stage, exc))  # type: ignore[arg-type]
            self._fail(error)
            return ReloadResult(name, label, None, time.perf_counter() - started, error)

        try:
            self._read_table(name)
        except ConfigError as exc:
            return failed("config", str(exc))
        if not self.settings(name).enabled:
            return failed("config", f"it is disabled ([plugins.{name}] enabled = false "
                                    f"in {self.config.path})")
        previous = old.source if old else self._sources.get(name)
        module = module_of(previous) if previous else None
        saved = purge_modules(module) if module else {}
        invalidate_caches()
        source: PluginSource | None = None
        try:
            source = fresh_source(name, previous, include_installed=self._include_installed)
            if source is None:
                raise LookupError(f"no installed plugin is called {name!r}")
            version = self._register(source)
        except PluginRejected as exc:
            self._put_back(module, saved, source)
            return failed("register", exc)
        except Exception as exc:
            self._put_back(module, saved, source)
            return failed("import", exc)
        if error := await self._bring_up(version, INIT_TIMEOUT_S):
            self._loads[name] = version.number - 1  # a version that never served has no number
            self._put_back(module, saved, source)
            return failed(error.stage, error)
        self._sources[name] = source
        self._versions[name] = version
        self._live.add(name)
        self._rebuild()  # the swap: new calls see the new version from here on
        self.errors = [error for error in self.errors if error.plugin != name]
        if old is not None:
            self._retire(old)
        return ReloadResult(name, label, version.label, time.perf_counter() - started)

    def _read_table(self, name: str) -> None:
        """Read ``[plugins.NAME]`` afresh from the config file (when there is one): a
        reloaded or newly deployed plugin gets its table as the file has it now."""
        if not self.config.path.is_file():
            return
        table = load_config(self.config.path).plugin(name)
        others = tuple(other for other in self.config.plugins if other.name != name)
        self.config = attrs.evolve(self.config, plugins=others + ((table,) if table else ()))

    @staticmethod
    def _put_back(module: str | None, saved: dict[str, Any],
                  source: PluginSource | None) -> None:
        """After a failed reload: the old modules back in :data:`sys.modules`."""
        restore_modules([module, module_of(source) if source else None], saved)

    def _retire(self, version: PluginVersion) -> asyncio.Task[None]:
        """Destroy ``version`` in the background once its calls in flight have drained."""
        self._retiring.append(version)
        task = asyncio.create_task(self._drain(version), name=f"drain {version.registered_as}")
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)
        return task

    async def unload(self, name: str) -> UnloadResult:
        """Stop dispatching to plugin ``name``, let its calls in flight finish, destroy it
        and forget its modules (``servletkit undeploy``); ``ok`` is false if it was not
        loaded. A later :meth:`reload` (or deploy) loads it again."""
        if self._reloading is None:
            self._reloading = asyncio.Lock()
        async with self._reloading:
            started = time.perf_counter()
            version = self._versions.pop(name, None)
            if version is None:
                return UnloadResult(name, None, None, 0.0)
            self._live.discard(name)
            self._rebuild()
            await self._retire(version)
            if module := module_of(version.source):
                purge_modules(module)
            invalidate_caches()
            return UnloadResult(name, version.label, version.source.distribution,
                                time.perf_counter() - started)

    async def deploy(self, distributions: Iterable[str]) -> list[ReloadResult]:
        """Load (or reload) every plugin of the installed ``distributions`` (just installed
        by ``servletkit deploy``); an empty list if they have none."""
        invalidate_caches()
        wanted = {canonical_name(dist) for dist in distributions}
        names = [name for name, source in installed_plugins().items()
                 if source.distribution and canonical_name(source.distribution) in wanted]
        return [await self.reload(name) for name in names]

    async def _drain(self, version: PluginVersion) -> None:
        deadline = time.monotonic() + self.drain_timeout_s
        try:
            # polled: the dispatcher's hot path counts nothing and signals nothing
            in_flight = self.dispatcher.in_flight
            def left() -> int:  # hook calls and HTTP requests
                return in_flight(version.registered_as) + version.requests

            while left() and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            if left():
                log.warning("plugin %r: version %s still had %d calls in flight after %g s; "
                            "destroying it anyway", version.name, version.label, left(),
                            self.drain_timeout_s)
        finally:
            await self._destroy(version)
            self._retiring.remove(version)

    async def drained(self) -> None:
        """Wait until every version replaced by a reload has been destroyed."""
        while self._drains:
            await asyncio.gather(*self._drains, return_exceptions=True)

    def source(self, name: str) -> PluginSource | None:
        """Where plugin ``name``'s code comes from, whether it loaded or failed."""
        return self._sources.get(name)

    def version(self, name: str) -> PluginVersion | None:
        """The version of plugin ``name`` that serves (or would, once started)."""
        return self._versions.get(name)

    @property
    def retiring(self) -> list[PluginVersion]:
        """Versions replaced by a reload that have not been destroyed yet."""
        return list(self._retiring)

    def _fail(self, error: PluginError) -> None:
        self.errors.append(error)
        log.error("plugin %r failed to %s: %s\n%s", error.plugin, error.stage, error.message,
                  error.traceback)

    # -- reporting -----------------------------------------------------------

    def statuses(self) -> list[PluginStatus]:
        """One row per known plugin, in dispatch order (config order, then name)."""
        errors = {error.plugin: error for error in self.errors}
        draining: dict[str, int] = {}
        for old in self._retiring:
            draining[old.name] = draining.get(old.name, 0) + 1
        rows = []
        for name, source in self._sources.items():
            version = self._versions.get(name)
            obj = version.obj if version is not None else None
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
                    loaded_version=version.label if version is not None else None,
                    since=version.since if version is not None else None,
                    calls=version.calls if version is not None else 0,
                    errors=version.errors if version is not None else 0,
                    draining=draining.get(name, 0),
                )
            )
        rows.sort(key=lambda row: (row.order, self.policy(row.name).position))
        return rows

    @property
    def live_plugins(self) -> list[str]:
        """Names of the plugins currently receiving events."""
        return sorted(self._live)
