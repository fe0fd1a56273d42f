"""Meta-tests: every hook is classified, documented with its exact arguments, and tested."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from servletkit.hooks import specs

HOOKS = {
    name: function
    for name, function in vars(specs).items()
    if inspect.isfunction(function) and hasattr(function, "servletkit_spec")
}
TESTS = Path(__file__).resolve().parents[1]
PLUGINS = TESTS.parent / "plugins"


def test_every_hook_is_declared_in_the_table() -> None:
    """Every specification carries its facts (a kind), so the derived tables know it."""
    assert set(specs.HOOKS.names) == set(HOOKS)
    kinds = [specs.INTERCEPTION_HOOKS, specs.OBSERVATION_HOOKS, specs.QUERY_HOOKS,
             specs.LIFECYCLE_HOOKS]
    assert set().union(*kinds) == set(HOOKS)
    assert specs.MODIFIABLE_HOOKS <= specs.INTERCEPTION_HOOKS
    carried = {facts.name for facts in specs.HOOKS.module_ops.values()}
    assert carried <= specs.INTERCEPTION_HOOKS


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_documents_each_argument(name: str) -> None:
    function = HOOKS[name]
    doc = inspect.getdoc(function) or ""
    assert len(doc.splitlines()[0]) > 10, f"{name} needs a one-line summary"
    for argument in inspect.signature(function).parameters:
        assert f":param {argument}:" in doc, f"{name}: document {argument!r}"
    if name in specs.INTERCEPTION_HOOKS | specs.QUERY_HOOKS:
        assert ":returns:" in doc, f"{name}: say what each answer means"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_has_a_test(name: str) -> None:
    sources = [
        path.read_text()
        for root in (TESTS, PLUGINS)
        for path in root.rglob("test_*.py")
        if path.resolve() != Path(__file__).resolve()
    ]
    assert any(f"def {name}(" in text for text in sources), (
        f"no test implements {name} in a plugin"
    )
