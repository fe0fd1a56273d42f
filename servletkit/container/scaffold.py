"""``servletkit new NAME``: scaffold a plugin distribution that installs and passes its tests.

The scaffold is a folder ``NAME`` (or ``--dir``) holding a ``pyproject.toml``
whose ``servletkit.plugins`` entry point names the package, the package with
the chosen hooks written as commented starting points, ``tests/test_MODULE.py``
using :mod:`servletkit.testing`, and a README saying how to run, test and
deploy it. The hooks' signatures are read from the hook specifications, so a
scaffold never names an argument a hook does not have.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import keyword
import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from servletkit.container.scaffold_templates import (
    BODIES,
    HOOK_TESTS,
    PYPROJECT,
    README,
    TEST_HEADER,
)
from servletkit.hooks import specs
from servletkit.hooks.specs import HOOKS

DEFAULT_HOOKS = ("on_send_event",)

# PEP 508's distribution names; the module is the name normalised (``-``/``.`` → ``_``)
_DISTRIBUTION = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")


class ScaffoldError(Exception):
    """Why a scaffold was refused, in one line."""


def module_name(name: str) -> str:
    """The package (and plugin) name of distribution ``name``, or raise :class:`ScaffoldError`."""
    if not _DISTRIBUTION.match(name):
        raise ScaffoldError(f"{name!r} is not a valid distribution name: use letters, digits, "
                            "'-', '_' and '.', starting and ending with a letter or digit")
    module = re.sub(r"[-.]+", "_", name).lower()
    if not module.isidentifier() or keyword.iskeyword(module):
        raise ScaffoldError(f"{name!r} does not make a valid Python module name ({module!r}): "
                            "start it with a letter")
    if module == "servletkit" or module in sys.stdlib_module_names or module == "tests":
        raise ScaffoldError(f"{name!r} would shadow the module {module!r}: choose another name")
    return module


def parse_hooks(text: str | None) -> tuple[str, ...]:
    """The hooks of ``--hooks a,b`` in spec order, or raise :class:`ScaffoldError`."""
    if text is None:
        return DEFAULT_HOOKS
    asked = [hook.strip() for hook in text.split(",") if hook.strip()]
    if not asked:
        raise ScaffoldError("--hooks names no hook (e.g. --hooks on_send_event,on_join_room)")
    for hook in asked:
        if hook not in HOOKS.names:
            close = difflib.get_close_matches(hook, sorted(HOOKS.names), n=1)
            hint = f"; did you mean {close[0]}?" if close else (
                f"; known hooks: {', '.join(sorted(HOOKS.names))}")
            raise ScaffoldError(f"unknown hook {hook!r}{hint}")
    return tuple(name for name in HOOKS.facts if name in asked)


def _signature(hook: str) -> str:
    """``on_join_room(user_id: str, room_id: str, context: PluginContext) -> Decision | None``.

    Wrapped one parameter a line when it would not fit in 100 columns after ``async def``.
    """
    signature = inspect.signature(getattr(specs, hook))
    params = [f"{p.name}: {p.annotation}" for p in signature.parameters.values()]
    line = f"{hook}({', '.join(params)}) -> {signature.return_annotation}"
    if len(line) <= 100 - len("async def :"):
        return line
    lines = "".join(f"    {param},\n" for param in params)
    return f"{hook}(\n{lines}) -> {signature.return_annotation}"


def _summary(hook: str) -> str:
    doc = inspect.getdoc(getattr(specs, hook)) or ""
    summary = doc.split("\n\n")[0].replace("\n", " ")
    if len(summary) <= 100 - len('    """"""'):
        return summary
    return "\n    ".join(textwrap.wrap(summary, 100 - 4)) + "\n    "


def _imports(hooks: Sequence[str]) -> str:
    text = " ".join(_signature(hook) for hook in hooks)
    public = ["Decision", "Ephemeral", "Event", "PluginContext"]
    names = [name for name in public if re.search(rf"\b{name}\b", text)]
    if any("Veto(" in BODIES[hook] for hook in hooks):
        names.append("Veto")
    lines = ['"""{doc}\n"""', "", "from __future__ import annotations", ""]
    typing = [name for name in ("Any",) if re.search(rf"\b{name}\b", text)]
    abc = [name for name in ("Mapping", "Sequence") if re.search(rf"\b{name}\b", text)]
    if abc:
        lines.append(f"from collections.abc import {', '.join(abc)}")
    if typing:
        lines.append(f"from typing import {', '.join(typing)}")
    if abc or typing:
        lines.append("")
    lines.append(f"from servletkit import {', '.join(sorted([*names, 'hookimpl']))}")
    if "servlet_routes" in hooks:
        lines += ["from starlette.requests import Request",
                  "from starlette.responses import JSONResponse",
                  "from starlette.routing import BaseRoute, Route",
                  "from starlette.types import ASGIApp"]
    return "\n".join(lines) + "\n"


def package_source(name: str, hooks: Sequence[str]) -> str:
    """The plugin's ``__init__.py``: each hook of ``hooks`` as a commented starting point."""
    doc = (f"{name}: a servletkit plugin.\n\nConfig (``[plugins.{module_name(name)}]`` in "
           "servletkit.toml) reaches every hook\nas ``context.config``.")
    parts = [_imports(hooks).replace("{doc}", doc)]
    for hook in hooks:
        kind = HOOKS.facts[hook].kind
        article = "an" if kind[0] in "aeiou" else "a"
        parts.append(f"\n\n@hookimpl\nasync def {_signature(hook)}:\n"
                     f'    """{_summary(hook)}"""\n'
                     f"    # {article} {kind} hook (reference: servletkit.hooks.specs)\n"
                     f"{BODIES[hook]}")
    return "".join(parts)


def test_source(name: str, hooks: Sequence[str]) -> str:
    """``tests/test_MODULE.py``: a test per hook, through the real dispatcher."""
    tests = list(dict.fromkeys(HOOK_TESTS[hook] for hook in hooks))  # init and destroy share
    body = "".join(tests)
    imports = ["from servletkit import Ephemeral"] if "Ephemeral(" in body else []
    kit = [name for name in ("RunnerFactory", "assert_allowed", "assert_vetoed", "message")
           if name in body]
    imports.append(f"from servletkit.testing import {', '.join(kit)}")
    code = "".join(BODIES[hook] for hook in hooks)
    # only the config keys the chosen hooks read
    header = "".join(line for line in TEST_HEADER.replace("IMPORTS", "\n".join(imports))
                     .splitlines(keepends=True)
                     if not line.startswith('    "') or line.split('"')[1] in code
                     ).replace("CONFIG = {\n}", "CONFIG: dict[str, object] = {}")
    return (header + body).replace("MODULE", module_name(name))


def scaffold(name: str, hooks: Sequence[str], folder: Path) -> list[Path]:
    """Write the plugin distribution ``name`` into ``folder``; return the files written."""
    module = module_name(name)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ScaffoldError(f"{folder} already exists and is not empty: choose another --dir")
    files = {
        "pyproject.toml": PYPROJECT.replace("NAME", name).replace("MODULE", module),
        f"{module}/__init__.py": package_source(name, hooks),
        f"tests/test_{module}.py": test_source(name, hooks),
        "README.md": README.replace("NAME", name).replace("MODULE", module)
        .replace("HOOKS", ", ".join(hooks)),
    }
    written = []
    for relative, text in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``servletkit new``."""
    parser.add_argument("name", metavar="NAME",
                        help="the distribution's name, e.g. quiet-room (its module: quiet_room)")
    parser.add_argument("--hooks", metavar="HOOK,HOOK",
                        help="the hooks to implement (default: on_send_event); any of: "
                             + ", ".join(sorted(HOOKS.names)))
    parser.add_argument("--dir", metavar="PATH",
                        help="where to write it (default: ./NAME); must be absent or empty")


def cmd_new(args: argparse.Namespace) -> int:
    """Scaffold the plugin and say what to do next."""
    hooks = parse_hooks(args.hooks)
    folder = Path(args.dir if args.dir else args.name)
    written = scaffold(args.name, hooks, folder)
    print(f"created plugin {module_name(args.name)} ({', '.join(hooks)}) in {folder}:")
    for path in written:
        print(f"  {path}")
    print(f"\nnext:\n  cd {folder}\n  pip install -e .\n  pytest\n  servletkit dev")
    return 0
