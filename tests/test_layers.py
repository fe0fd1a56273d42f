"""The package's layering (docs/architecture.md): imports at run time only go downwards.

``hooks`` ← ``store`` ← ``wires`` ← ``container`` ← ``dev`` ← ``testing``, and the CLI
(``container/cli.py``) on top of them all. The config (``container/config.py``, which
imports only the hook table) sits with the store: every layer above reads it. The
Synapse module imports only what may run inside Synapse. Imports for type checkers
(under ``if TYPE_CHECKING:``) are not run and may name anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "servletkit"
LAYERS = {"hooks": 0, "throttle": 0, "store": 1, "wires": 2, "container": 3, "dev": 4,
          "testing": 5, "cli": 6}
SYNAPSE_MAY_IMPORT = ("servletkit.hooks", "servletkit.throttle", "servletkit.synapse",
                      "servletkit.wires.module.protocol")


def runtime_imports(path: Path) -> list[str]:
    """The ``servletkit.*`` modules ``path`` imports when it runs."""
    tree = ast.parse(path.read_text())
    skipped = {id(node) for statement in ast.walk(tree) if isinstance(statement, ast.If)
               and "TYPE_CHECKING" in ast.unparse(statement.test)
               for node in ast.walk(statement)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return [name for name in found if name.startswith("servletkit.")]


def layer_of(module: str) -> str | None:
    if module.startswith(CONFIG):
        return "store"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


CONFIG = "servletkit.container.config"  # config.py and config_tables.py

MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.stem == "throttle")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_downwards(path: Path) -> None:
    """A module imports no layer above its own at run time."""
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    if path == PACKAGE / "container" / "cli.py":
        own = "cli"
    elif path.parent.name == "container" and path.stem.startswith("config"):
        own = "store"  # config.py and config_tables.py: beside the store, reading the hooks
    for imported in runtime_imports(path):
        if own == "synapse":
            assert imported.startswith(SYNAPSE_MAY_IMPORT), f"the Synapse side imports {imported}"
            continue
        other = layer_of(imported)
        if own in LAYERS and other is not None:
            assert LAYERS[other] <= LAYERS[own], f"{own} imports {imported} (a layer above)"
