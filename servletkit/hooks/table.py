"""The hook table: every fact about a hook, declared once, beside its specification.

A hook specification in :mod:`servletkit.hooks.specs` is decorated with its
kind (:func:`interception`, :func:`observation`, :func:`query`,
:func:`lifecycle`); an interception hook also says whether ``Modify`` may
change its subject and how the module wire carries it (:class:`ModuleCall`:
the request's op and fields, the Synapse callbacks that ask it and their
default failure policy). Everything else — the dispatcher's chains, the
module wire's ops and argument parsing, the Synapse module's callback
registrations and default policies, ``[module.callbacks]`` in the config, the
hook names a plugin may implement — is derived from a :class:`HookTable`.

Adding a hook is one decorated function in ``specs.py``. Light on purpose:
the Synapse side imports this module.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, Final, Literal, TypeVar

import attrs

from servletkit.hooks.markers import hookspec

HookKind = Literal["lifecycle", "interception", "observation", "query"]
"""How the container calls a hook and what it does with the answers.

``lifecycle``: once per plugin instance (init, destroy). ``interception``: a
chain whose answers are decisions. ``observation``: every plugin, answers
ignored. ``query``: plugin by plugin until one answers.
"""

FieldKind = Literal["event", "str", "optional_str", "object"]
"""What a module-wire request field holds: a client event, a string, a string or
``null``, a JSON object."""

SynapseRegistry = Literal["spam_checker", "third_party_rules"]
"""Which of Synapse's ``register_*_callbacks`` methods takes a callback."""

F = TypeVar("F", bound=Callable[..., Any])


@attrs.frozen
class SynapseCallback:
    """A Synapse module callback that asks an interception hook.

    ``fail_open`` is its default failure policy: whether the action goes
    through when the container cannot answer in time.
    """

    name: str
    registry: SynapseRegistry
    fail_open: bool = False


@attrs.frozen
class ModuleCall:
    """How the module wire carries an interception hook.

    A request is ``{"id": N, "op": op, **fields}``; ``fields`` name the
    request's keys in the order of the hook's arguments (``context`` aside),
    each with what it holds. ``callbacks`` are the Synapse callbacks that send
    this op.
    """

    op: str
    fields: tuple[tuple[str, FieldKind], ...]
    callbacks: tuple[SynapseCallback, ...]


@attrs.frozen
class HookFacts:
    """What the container knows about one hook besides its signature."""

    name: str
    kind: HookKind
    modifiable: bool = False
    module: ModuleCall | None = None


FACTS_ATTRIBUTE: Final = "servletkit_hook_facts"
"""Where the decorators below keep a specification's :class:`HookFacts`."""


def _declare(kind: HookKind, *, modifiable: bool = False,
             module: ModuleCall | None = None) -> Callable[[F], F]:
    def mark(function: F) -> F:
        setattr(function, FACTS_ATTRIBUTE,
                HookFacts(function.__name__, kind, modifiable, module))
        return hookspec(function)

    return mark


def interception(*, modifiable: bool = False,
                 module: ModuleCall | None = None) -> Callable[[F], F]:
    """Declare an interception hook (its answer is a decision).

    ``modifiable``: its first argument is an event that ``Modify`` may change.
    ``module``: how the module wire carries it (``None``: it does not).
    """
    return _declare("interception", modifiable=modifiable, module=module)


def observation(function: F) -> F:
    """Declare an observation hook (answers are ignored)."""
    return _declare("observation")(function)


def query(function: F) -> F:
    """Declare a query hook (the first plugin that answers wins)."""
    return _declare("query")(function)


def lifecycle(function: F) -> F:
    """Declare a lifecycle hook (once per plugin instance)."""
    return _declare("lifecycle")(function)


@attrs.frozen
class HookTable:
    """The hooks of a set of specification modules, and the tables derived from them."""

    modules: tuple[ModuleType, ...]
    facts: Mapping[str, HookFacts]

    @classmethod
    def from_modules(cls, *modules: ModuleType) -> HookTable:
        """Collect the declared specifications of ``modules`` (later ones may add hooks)."""
        facts: dict[str, HookFacts] = {}
        for module in modules:
            for function in vars(module).values():
                found = getattr(function, FACTS_ATTRIBUTE, None) if inspect.isfunction(
                    function) else None
                if isinstance(found, HookFacts):
                    facts[found.name] = found
        ops = [f.module.op for f in facts.values() if f.module is not None]
        if len(ops) != len(set(ops)):
            raise ValueError(f"two hooks share a module-wire op: {sorted(ops)}")
        return cls(tuple(modules), facts)

    @property
    def names(self) -> frozenset[str]:
        """Every hook name a plugin may implement."""
        return frozenset(self.facts)

    def of_kind(self, *kinds: HookKind) -> frozenset[str]:
        """The names of the hooks of ``kinds``."""
        return frozenset(name for name, f in self.facts.items() if f.kind in kinds)

    @property
    def modifiable(self) -> frozenset[str]:
        """Interception hooks whose first argument is an event ``Modify`` may change."""
        return frozenset(name for name, f in self.facts.items() if f.modifiable)

    @property
    def module_ops(self) -> Mapping[str, HookFacts]:
        """Module-wire op → the hook it runs."""
        return {f.module.op: f for f in self.facts.values() if f.module is not None}

    @property
    def synapse_callbacks(self) -> Mapping[str, tuple[HookFacts, SynapseCallback]]:
        """Synapse callback name → the hook it asks, and the callback's facts."""
        return {callback.name: (f, callback)
                for f in self.facts.values() if f.module is not None
                for callback in f.module.callbacks}

