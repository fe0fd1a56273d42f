"""``servletkit dev``'s reloader: save a plugin's file, and the plugin is reloaded.

Every enabled plugin installed in editable mode (``pip install -e``: its
distribution's ``direct_url.json`` says ``"editable": true``) has its source
watched with watchfiles: the folder of its top-level package. That includes a
plugin that failed to import or init at start: saving the fix loads it. A burst of saves
is debounced into one change; each plugin the change touches is reloaded
(:meth:`~servletkit.container.runtime.Container.reload`) and one line says what
happened: the plugin, its old and new version and the time it took, or the error
while the old version keeps serving.

Which plugins a change touches: a plugin whose entry module is a changed file;
otherwise (a helper module changed) every plugin whose package holds it. The
project's ``pyproject.toml`` is looked at every :data:`PYPROJECT_POLL_MS`: when it
changes, the distribution's plugins are reloaded with the entry points it declares
now (:func:`~servletkit.container.plugins.installed_plugins` reads them from it), so a
new entry point loads without a reinstall.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

import attrs
import watchfiles

from servletkit.container.plugins import declared_entry_points
from servletkit.container.runtime import Container
from servletkit.container.versions import ReloadResult, module_of

STEP_MS: Final = 30
"""A change is acted on once the files have been quiet this long (an editor's save writes
several times)."""

DEBOUNCE_MS: Final = 300
"""... or at the latest this long after the first write, while saves keep coming."""

PYPROJECT_POLL_MS: Final = 500
"""How often the plugins' ``pyproject.toml`` files are looked at (their modification
time): they are outside the watched package folders."""


@attrs.frozen
class WatchedPlugin:
    """A plugin whose source is watched: its entry module's file, its package's folder,
    and its project's ``pyproject.toml`` (and distribution) for new entry points."""

    name: str
    module_file: Path
    root: Path
    pyproject: Path | None = None
    distribution: str | None = None


def watched_plugins(container: Container) -> list[WatchedPlugin]:
    """The enabled plugins installed in editable mode, with what to watch of each.

    Those that failed to import or init are watched too, so that saving the fix
    loads them: their files are found without importing them.
    """
    found = []
    for row in container.statuses():
        version = container.version(row.name)
        source = version.source if version is not None else container.source(row.name)
        module = module_of(source) if source is not None else None
        if not row.enabled or source is None or module is None or source.project is None:
            continue
        if located := _locate(module):
            found.append(WatchedPlugin(row.name, *located, source.project / "pyproject.toml",
                                       source.distribution))
    return found


def _locate(module: str) -> tuple[Path, Path] | None:
    """The file of ``module`` and the folder of its top-level package, resolved; found
    without importing anything of a plugin that may be broken (``None``: not found)."""
    top, _, rest = module.partition(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    if not spec.submodule_search_locations:  # a single-module plugin
        return Path(spec.origin).resolve(), Path(spec.origin).resolve()
    root = Path(next(iter(spec.submodule_search_locations))).resolve()
    if not rest:
        return Path(spec.origin).resolve(), root
    inner = root.joinpath(*rest.split("."))
    return (inner / "__init__.py" if inner.is_dir() else inner.with_suffix(".py")), root


def _stamps(plugins: Iterable[WatchedPlugin]) -> dict[Path, float]:
    """The modification time of each plugin's ``pyproject.toml`` (absent ones left out)."""
    stamps = {}
    for plugin in plugins:
        if plugin.pyproject is not None:
            with contextlib.suppress(OSError):
                stamps[plugin.pyproject] = plugin.pyproject.stat().st_mtime
    return stamps


def touched(plugins: Iterable[WatchedPlugin], changed: Iterable[Path]) -> list[str]:
    """The plugins a change of the files ``changed`` touches, by name, in ``plugins`` order."""
    plugins = list(plugins)
    changed = {path.resolve() for path in changed}
    entries = {plugin.module_file for plugin in plugins}
    names = []
    for plugin in plugins:
        own = plugin.module_file in changed
        helper = any(path not in entries and (path == plugin.root or plugin.root in path.parents)
                     for path in changed)
        if own or helper:
            names.append(plugin.name)
    return names


class PluginWatcher:
    """Watches the editable plugins of ``container``; reloads one when its files change.

    ``report`` gets one line per reload. :meth:`run` runs until cancelled, or
    returns at once when no plugin is installed in editable mode.
    """

    def __init__(self, container: Container, report: Callable[[str], None]) -> None:
        self.container = container
        self.report = report
        self.results: list[ReloadResult] = []

    async def run(self) -> None:
        """:meth:`watch`; if watching fails (e.g. the system's limit of watches), say so
        in one line: the container serves on, without reloading."""
        try:
            await self.watch()
        except Exception as exc:
            self.report(f"stopped watching the plugins' source: {type(exc).__name__}: {exc}")

    def _note(self, result: ReloadResult) -> None:
        self.results.append(result)
        self.report(result.describe())

    async def _projects_changed(self, plugins: list[WatchedPlugin],
                                pyprojects: set[Path]) -> None:
        """Reload the distributions whose ``pyproject.toml`` changed, with the entry points
        it declares now (new plugins load); say so when it declares none statically."""
        for pyproject in sorted(pyprojects):
            dists = {p.distribution for p in plugins if p.pyproject == pyproject}
            if declared_entry_points(pyproject.parent) is None:
                self.report(f"{pyproject} changed, but it declares no servletkit.plugins entry "
                            f"points that servletkit can read (dynamic, or not valid TOML): "
                            f"run `servletkit deploy {pyproject.parent}` to apply them")
                continue
            for result in await self.container.deploy(sorted(filter(None, dists))):
                self._note(result)

    async def watch(self) -> None:
        """Watch, reload, report; the watched folders follow the plugins' current code."""
        while plugins := watched_plugins(self.container):
            roots = sorted({plugin.root for plugin in plugins})
            stamps = _stamps(plugins)
            async for changes in watchfiles.awatch(
                *roots, watch_filter=watchfiles.PythonFilter(), step=STEP_MS,
                debounce=DEBOUNCE_MS, recursive=True, rust_timeout=PYPROJECT_POLL_MS,
                yield_on_timeout=True,
            ):
                for name in touched(plugins, (Path(path) for _, path in changes)):
                    self._note(await self.container.reload(name))
                if (now := _stamps(plugins)) != stamps:
                    await self._projects_changed(plugins, {p for p in now
                                                           if now[p] != stamps.get(p)})
                    stamps = now
                plugins = watched_plugins(self.container)
                if sorted({plugin.root for plugin in plugins}) != roots:
                    break  # an entry point moved to another package: watch afresh
            else:
                return
            await asyncio.sleep(0)
