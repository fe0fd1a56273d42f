"""Finding, importing and registering plugins.

A plugin is an entry point in the group ``servletkit.plugins``, found with the
``importlib-metadata`` package (not the stdlib module: its discovery and caches
behave the same on every Python, which reload and deploy rely on): its name is the
plugin's name, its value a module (``pkg.module``) or a class
(``pkg.module:Class``, instantiated with no arguments). pluggy registers it and
checks its hook implementations against the specs.
"""

from __future__ import annotations

import difflib
import json
import logging
import tomllib
import traceback
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import unquote, urlparse

import attrs
import importlib_metadata
import pluggy

from servletkit.hooks.markers import PROJECT_NAME
from servletkit.hooks.specs import HOOKS
from servletkit.hooks.table import HookTable

ENTRY_POINT_GROUP: Final = "servletkit.plugins"

log = logging.getLogger("servletkit.container")

@attrs.frozen
class PluginSource:
    """Where a plugin comes from: its entry point, or an object handed in directly.

    ``project`` is the project folder of a distribution installed in editable mode
    (``pip install -e``), whose files are the plugin's code.
    """

    name: str
    distribution: str | None = None
    version: str | None = None
    entry_point: importlib_metadata.EntryPoint | None = None
    obj: Any = None
    project: Path | None = None

    @classmethod
    def from_entry_point(cls, entry_point: importlib_metadata.EntryPoint) -> PluginSource:
        dist = entry_point.dist
        return cls(
            name=entry_point.name,
            distribution=dist.name if dist else None,
            version=dist.version if dist else None,
            entry_point=entry_point,
            project=editable_project(dist) if dist else None,
        )

    def load(self) -> Any:
        """Import the plugin: the module, or an instance of the class it names."""
        if self.entry_point is None:
            return self.obj
        loaded = self.entry_point.load()
        return loaded() if isinstance(loaded, type) else loaded


@attrs.frozen
class PluginError:
    """A plugin that could not be used, and why: the stage that failed and the traceback.

    ``config`` is a reload that found the plugin's table invalid or disabled.
    """

    plugin: str
    stage: Literal["config", "import", "register", "init", "routes", "destroy"]
    message: str
    traceback: str = ""


class PluginRejected(Exception):
    """A plugin's hook implementations do not match the specs."""


def installed_plugins() -> dict[str, PluginSource]:
    """Every plugin installed in this environment, by name.

    A distribution installed in editable mode whose ``pyproject.toml`` declares its
    ``servletkit.plugins`` entry points (statically) has those, as the file says
    now: an entry point added or changed there needs no reinstall.
    """
    found: dict[str, PluginSource] = {}
    for entry_point in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
        source = PluginSource.from_entry_point(entry_point)
        declared = declared_entry_points(source.project) if source.project else None
        if declared is None:
            found.setdefault(source.name, source)
            continue
        for name, value in declared.items():
            found.setdefault(name, attrs.evolve(source, name=name, entry_point=(
                importlib_metadata.EntryPoint(name, value, ENTRY_POINT_GROUP))))
    return found


def editable_project(dist: Any) -> Path | None:
    """The project folder of distribution ``dist`` if it is installed in editable mode (its
    ``direct_url.json`` says ``"editable": true``), else ``None``."""
    text = dist.read_text("direct_url.json")
    try:
        facts = json.loads(text) if text else {}
        editable = facts.get("dir_info", {}).get("editable") is True
        url = urlparse(facts.get("url", ""))
    except (ValueError, AttributeError):
        return None
    return Path(unquote(url.path)) if editable and url.scheme == "file" else None


def declared_entry_points(project: Path) -> Mapping[str, str] | None:
    """The ``servletkit.plugins`` entry points ``project/pyproject.toml`` declares now;
    ``None`` if it declares none statically (no file or ``[project]`` table, entry
    points ``dynamic``, not valid TOML: the installed ones count, and a warning says
    why for the last)."""
    path = project / "pyproject.toml"
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get("project")
    except OSError:
        return None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        log.warning("%s is not valid TOML (%s): the entry points installed from it count "
                    "until it is fixed", path, exc)
        return None
    if not isinstance(table, dict) or "entry-points" in table.get("dynamic", ()):
        return None
    declared = table.get("entry-points", {}).get(ENTRY_POINT_GROUP)
    if not isinstance(declared, dict):
        return None
    return {name: value for name, value in declared.items() if isinstance(value, str)}


def new_plugin_manager(hooks: HookTable = HOOKS) -> pluggy.PluginManager:
    """A plugin manager with the specifications of ``hooks``, and no plugins."""
    pm = pluggy.PluginManager(PROJECT_NAME)
    for module in hooks.modules:
        pm.add_hookspecs(module)
    return pm


def register(pm: pluggy.PluginManager, source: PluginSource, *, as_name: str | None = None) -> Any:
    """Import ``source`` and register it under its name; return the plugin object.

    ``as_name`` registers it under another name (a reloaded version: ``NAME@2``).

    Raises :class:`PluginRejected` (with a message naming the hook and a fix) if
    it implements an unknown hook or declares arguments the spec does not have.
    Other exceptions come from importing the plugin.
    """
    obj = source.load()
    try:
        pm.register(obj, name=as_name or source.name)
    except pluggy.PluginValidationError as exc:
        raise PluginRejected(f"plugin {source.name!r}: {exc}") from None
    unknown = sorted(hook.name for hook in pm.get_hookcallers(obj) or () if hook.spec is None)
    if unknown:
        pm.unregister(obj)
        known = sorted(name for name, hook in vars(pm.hook).items()
                       if isinstance(hook, pluggy.HookCaller) and hook.spec is not None)
        raise PluginRejected(
            f"plugin {source.name!r} implements unknown hooks: "
            + "; ".join(_unknown_hook_hint(name, known) for name in unknown)
        )
    return obj


def _unknown_hook_hint(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"{name} (did you mean {close[0]}?)" if close else name


def implemented_hooks(pm: pluggy.PluginManager, obj: Any) -> list[str]:
    """The hook names a registered plugin object implements, sorted."""
    return sorted(hook.name for hook in pm.get_hookcallers(obj) or ())


def describe_failure(plugin: str, stage: str, exc: BaseException) -> PluginError:
    """A :class:`PluginError` for ``exc`` raised while ``stage`` of ``plugin``."""
    text = "".join(traceback.format_exception(exc))
    return PluginError(plugin, stage, f"{type(exc).__name__}: {exc}", text)  # type: ignore[arg-type]


def sources_for(
    installed: dict[str, PluginSource], extra: Iterable[PluginSource]
) -> dict[str, PluginSource]:
    """Installed plugins plus those handed in directly (which win on a name clash)."""
    merged = dict(installed)
    merged.update({source.name: source for source in extra})
    return merged
