"""The wires: the ways a homeserver reaches the container, each one a :class:`Wire`.

A wire turns what the homeserver sends into hook calls and the plugins'
answers into what the homeserver expects. Each plugs into the app the same
way: a factory takes the container and returns the wire, or ``None`` when the
config leaves it off; the app mounts its routes and enters its lifespan
before the plugins start (:mod:`servletkit.container.app`).

This package's ``__init__`` stays light: the Synapse module imports
``servletkit.wires.module.protocol``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from servletkit.container.runtime import Container
    from servletkit.hooks.events import WireName


class Wire(Protocol):
    """One wire of a running container."""

    @property
    def name(self) -> WireName:
        """What the plugins are told asked them (``event.wire``)."""

    @property
    def honours_modify(self) -> bool:
        """Whether a ``Modify`` changes what the homeserver keeps. A wire that cannot
        apply one records it as not applied (appservice) or as a plugin error (policy)."""

    def routes(self) -> Sequence[BaseRoute]:
        """The HTTP routes it serves in the container's app (possibly none)."""

    async def settled(self, timeout_s: float) -> None:
        """Return once the homeserver's side has connected (the module wire: Synapse's
        module is back), or after ``timeout_s``; at once for a wire with nothing to
        wait for. The plugins start after every wire has settled, so that their own
        homeserver calls from ``servlet_init`` are answered."""

    def lifespan(self) -> AbstractAsyncContextManager[None]:
        """What runs while the app lives (a listener of its own, a connection).

        Entered before the plugins' ``servlet_init`` (so a plugin's own homeserver
        calls during init are answered) and left, after draining, before their
        ``servlet_destroy``.
        """


WireFactory = Callable[["Container"], "Wire | None"]
"""Builds a container's wire, or ``None`` when its config section leaves it off."""
