"""A plugin distribution on disk that a test rewrites and reloads (tests of issue 13).

:class:`PluginOnDisk` writes a package with a ``.dist-info`` (its version and entry
point) into a folder on ``sys.path``, as pip would install it; each :meth:`write`
replaces the files, as an author saving them would. The plugin records its
lifecycle in a journal module outside its package (which a reload never purges).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from servletkit.container.plugins import ENTRY_POINT_GROUP

HEADER = '''
from servletkit import Allow, Modify, Veto, hookimpl
import {journal} as journal
VERSION = {version!r}


@hookimpl
def servlet_init(context):
    journal.events.append(("init", VERSION))


@hookimpl
def servlet_destroy(context):
    journal.events.append(("destroy", VERSION))
'''


def importable_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, *,
                      editable: bool = False) -> PluginOnDisk:
    """A :class:`PluginOnDisk` in ``tmp_path/site``, a folder put on ``sys.path`` for the
    test (``monkeypatch`` takes it off again)."""
    site = tmp_path / "site"
    monkeypatch.syspath_prepend(str(site))
    return PluginOnDisk(site, name, editable=editable)


class PluginOnDisk:
    """Plugin ``name`` (package ``name``, distribution ``name``) in ``site``."""

    def __init__(self, site: Path, name: str, *, editable: bool = False) -> None:
        self.site = site
        self.name = name
        self.editable = editable
        self.journal = types.ModuleType(f"{name}_journal")
        self.journal.events = []  # type: ignore[attr-defined]
        sys.modules[self.journal.__name__] = self.journal
        site.mkdir(parents=True, exist_ok=True)  # and a file for plugins in other processes
        (site / f"{self.journal.__name__}.py").write_text("events = []\n")

    @property
    def events(self) -> list[tuple[str, str]]:
        """``("init" | "destroy", VERSION)`` in the order the versions were called."""
        return self.journal.events  # type: ignore[no-any-return]

    def write(self, version: str, body: str, *, files: dict[str, str] | None = None,
              entry_point: str | None = None) -> None:
        """Replace the package: ``__init__.py`` is the header plus ``body``; ``files``
        are other modules in it (``"helper.py": source``); the dist-info says ``version``."""
        package = self.site / self.name
        header = HEADER.format(journal=self.journal.__name__, version=version)
        sources = {"__init__.py": header + textwrap.dedent(body)}
        sources.update({name: textwrap.dedent(text) for name, text in (files or {}).items()})
        # saved in place, as an editor does (``__pycache__`` stays), stale modules deleted
        for stale in package.rglob("*.py"):
            if str(stale.relative_to(package)) not in sources:
                stale.unlink()
        for filename, source in sources.items():
            path = package / filename
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(source)
        for old in self.site.glob(f"{self.name}-*.dist-info"):
            shutil.rmtree(old)
        dist_info = self.site / f"{self.name}-{version}.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {self.name}\nVersion: {version}\n")
        if self.editable:  # as pip install -e records it
            (dist_info / "direct_url.json").write_text(
                f'{{"dir_info": {{"editable": true}}, "url": "{package.as_uri()}"}}')
        (dist_info / "entry_points.txt").write_text(
            f"[{ENTRY_POINT_GROUP}]\n{self.name} = {entry_point or self.name}\n")

    def forget(self) -> None:
        """Take the plugin's modules and its journal out of ``sys.modules``."""
        for module in [m for m in sys.modules
                       if m == self.name or m.startswith(self.name + ".")]:
            del sys.modules[module]
        sys.modules.pop(self.journal.__name__, None)


def servletkit_cli(config: Path, *args: str, python: str = sys.executable,
                   env: dict[str, str] | None = None,
                   timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``servletkit ARGS --config CONFIG`` (the admin commands: reload, plugins, deploy,
    undeploy) with ``python``; its exit status and captured output."""
    return subprocess.run([python, "-m", "servletkit.container.cli", *args, "--config",
                           str(config)], env=env, capture_output=True, text=True,
                          timeout=timeout)
