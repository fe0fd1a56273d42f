"""Plugin versions: what one load of a plugin is, and how a reload imports the next one.

A plugin is loaded once at start and again on every reload; each load is a
:class:`PluginVersion` with its own number (1, 2, 3 …), plugin object, context
and the chains its implementations run in. The first load is registered in
pluggy under the plugin's name, later ones under ``NAME@NUMBER``, so old and new
stand side by side while the old one's calls drain.

Importing "the new version" means importing the plugin's files afresh: its
modules and submodules are taken out of :data:`sys.modules` (the whole top-level
package the entry point names, except servletkit's own), the import system's
and ``importlib_metadata``'s caches are dropped (so new files, a new version
number and new entry points are seen), and the entry point is read and loaded
again (what maubot's loader does, with submodules too). If that fails the old
modules are put back, so what imports them later still finds the working ones.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
import time
import types
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import importlib_metadata

from servletkit.container.plugins import PluginError, PluginSource, installed_plugins
from servletkit.hooks.context import PluginContext
from servletkit.hooks.dispatcher import Chain

PROTECTED_PACKAGES = frozenset({"servletkit"})
"""Top-level packages a reload never purges as a whole (only the plugin's own modules in
them): the container itself."""


@attrs.define(eq=False)
class PluginVersion:
    """One load of a plugin: its object, its context, and the chains it has run in.

    ``number`` counts the loads of the plugin in this container (1 at start);
    ``since`` is when it started serving (``time.time()``); ``chains`` are the
    dispatcher chains that hold its implementations, kept until they drain so
    :attr:`calls` and :attr:`errors` can be counted without touching the
    dispatcher's hot path.
    """

    name: str
    number: int
    source: PluginSource
    obj: Any
    context: PluginContext
    since: float = attrs.field(factory=time.time)
    chains: list[Chain] = attrs.Factory(list)
    past_calls: int = 0
    past_errors: int = 0
    destroyed: bool = False
    http: Any = None
    requests: int = 0

    @property
    def registered_as(self) -> str:
        """Its name in pluggy: the plugin's name for the first load, ``NAME@NUMBER`` after."""
        return self.name if self.number == 1 else f"{self.name}@{self.number}"

    @property
    def label(self) -> str:
        """The distribution's version and the load number, e.g. ``1.2.0#3``."""
        return f"{self.source.version or 'unversioned'}#{self.number}"

    def note_chains(self, chains: Iterable[Chain]) -> None:
        """Remember which of ``chains`` (just built) hold this version's implementations."""
        key = self.registered_as
        self.chains.extend(chain for chain in chains
                           if any(slot.registered_as == key for slot in chain.slots))

    def forget_drained(self, current: Iterable[Chain], in_flight: int) -> None:
        """Fold the figures of chains no longer dispatched to into the totals, once none
        of this version's runs is in flight (so those figures no longer change)."""
        if in_flight:
            return
        keep = {id(chain) for chain in current}
        kept = []
        for chain in self.chains:
            if id(chain) in keep:
                kept.append(chain)
                continue
            calls, errors = self._figures(chain)
            self.past_calls += calls
            self.past_errors += errors
        self.chains = kept

    @property
    def calls(self) -> int:
        """How often its hook implementations were called."""
        return self.past_calls + sum(self._figures(chain)[0] for chain in self.chains)

    @property
    def errors(self) -> int:
        """How often its hook implementations failed (raised, overran, answered nonsense)."""
        return self.past_errors + sum(self._figures(chain)[1] for chain in self.chains)

    def _figures(self, chain: Chain) -> tuple[int, int]:
        key = self.registered_as
        slots = [slot for slot in chain.slots if slot.registered_as == key]
        return sum(slot.calls for slot in slots), sum(slot.failures for slot in slots)


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
    loaded_version: str | None = None
    since: float | None = None
    calls: int = 0
    errors: int = 0
    draining: int = 0

    def as_json(self) -> dict[str, Any]:
        """The row as the admin API sends it (``servletkit plugins`` of a running container)."""
        row = attrs.asdict(self, recurse=False)
        row["hooks"] = list(self.hooks)
        row["error"] = None if self.error is None else {
            "stage": self.error.stage, "message": self.error.message}
        return row


@attrs.frozen
class ReloadResult:
    """What a reload did: the versions before and after, how long it took, or why it failed.

    ``old`` is ``None`` when the plugin was not loaded before; ``new`` is ``None``
    when the reload failed, in which case ``error`` says why and ``old`` (if any)
    keeps serving.
    """

    plugin: str
    old: str | None
    new: str | None
    seconds: float
    error: PluginError | None = None

    @property
    def ok(self) -> bool:
        """Whether the new version now serves."""
        return self.error is None

    def describe(self) -> str:
        """One line for a terminal: ``NAME: reloaded OLD -> NEW in N ms``, or the failure."""
        took = f"{self.seconds * 1000:.0f} ms"
        if self.error is None:
            return f"{self.plugin}: reloaded {self.old or 'not loaded'} -> {self.new} in {took}"
        keeps = f"{self.old} keeps serving" if self.old else "nothing serves"
        return (f"{self.plugin}: reload failed after {took} ({self.error.stage}: "
                f"{self.error.message}); {keeps}")

    def as_json(self) -> dict[str, Any]:
        """The result as the admin API sends it."""
        return {
            "plugin": self.plugin, "old": self.old, "new": self.new, "ok": self.ok,
            "seconds": self.seconds, "summary": self.describe(),
            "error": None if self.error is None else {
                "stage": self.error.stage, "message": self.error.message},
        }


@attrs.frozen
class UnloadResult:
    """What an unload did: the version destroyed (``None``: the plugin was not loaded),
    its distribution (for ``servletkit undeploy --uninstall``), how long it took."""

    plugin: str
    old: str | None
    distribution: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        """Whether a loaded version was unloaded."""
        return self.old is not None

    def describe(self) -> str:
        """One line: ``NAME: unloaded OLD in N ms``, or that it was not loaded."""
        if self.old is None:
            return f"{self.plugin}: not loaded, nothing to unload"
        return (f"{self.plugin}: unloaded {self.old} in {self.seconds * 1000:.0f} ms "
                f"(its calls in flight finished first)")

    def as_json(self) -> dict[str, Any]:
        """The result as the admin API sends it."""
        return {"plugin": self.plugin, "old": self.old, "ok": self.ok,
                "distribution": self.distribution, "seconds": self.seconds,
                "summary": self.describe()}


def canonical_name(distribution: str) -> str:
    """A distribution's name as packaging compares them (``Quiet_Room`` is ``quiet-room``)."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def module_of(source: PluginSource) -> str | None:
    """The module a plugin's code lives in (the entry point's, or the object's)."""
    if source.entry_point is not None:
        return source.entry_point.module
    if isinstance(source.obj, types.ModuleType):
        return source.obj.__name__
    if source.obj is not None:
        module = type(source.obj).__module__
        return None if module == "builtins" else module
    return None


def owned_modules(module: str) -> list[str]:
    """Names in :data:`sys.modules` a reload of code in ``module`` imports afresh.

    That is the top-level package and everything under it, unless the package
    is protected (servletkit's own): then ``module`` and its submodules only.
    """
    top = module.partition(".")[0]
    root = module if top in PROTECTED_PACKAGES else top
    return [name for name in list(sys.modules)
            if name == root or name.startswith(root + ".")]


def purge_modules(module: str) -> dict[str, types.ModuleType]:
    """Take the plugin's modules out of :data:`sys.modules`; return them to restore.

    Their cached bytecode is deleted too: Python trusts a ``.pyc`` whose source has
    the same size and modification second, which a quick one-character edit has.
    """
    purged = {name: sys.modules.pop(name) for name in owned_modules(module)}
    for purged_module in purged.values():
        cached = getattr(purged_module, "__cached__", None)
        if isinstance(cached, str):
            with contextlib.suppress(OSError):
                os.remove(cached)
    return purged


def restore_modules(modules: Iterable[str | None], saved: Mapping[str, types.ModuleType]) -> None:
    """Drop what was imported of ``modules`` (and their packages) since the purge, and put
    back the modules :func:`purge_modules` took."""
    for module in modules:
        for name in owned_modules(module) if module else ():
            del sys.modules[name]
    sys.modules.update(saved)


def invalidate_caches() -> None:
    """Forget what the import system and ``importlib_metadata`` know of files on disk."""
    importlib.invalidate_caches()
    finder = getattr(importlib_metadata, "MetadataPathFinder", None)
    if finder is not None:
        finder.invalidate_caches()


def fresh_source(name: str, previous: PluginSource | None, *,
                 include_installed: bool) -> PluginSource | None:
    """Where plugin ``name`` comes from now (after :func:`invalidate_caches`).

    An installed plugin's entry point is read again (its value or version may
    have changed). A plugin handed in as an object is imported again from its
    module (a module, or an instance of a class, made with no arguments);
    ``None`` if ``name`` is neither installed nor known.
    """
    if include_installed:
        found = installed_plugins().get(name)
        if found is not None:
            return found
    if previous is None or previous.entry_point is not None:
        return None
    obj = previous.obj
    module = module_of(previous)
    if module is None:
        return previous
    fresh = importlib.import_module(module)
    if not isinstance(obj, types.ModuleType):
        fresh = getattr(fresh, type(obj).__qualname__)()
    return attrs.evolve(previous, obj=fresh)
