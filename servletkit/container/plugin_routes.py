"""Plugins' own HTTP routes, served under ``/_servletkit/plugins/NAME/`` (hook ``servlet_routes``).

Each loaded version of a plugin answers ``servlet_routes`` once, after its
``servlet_init``; :func:`routes_app` turns the answer into the version's ASGI app.
:class:`PluginRoutes` is mounted once on the ``[server]`` listener and holds one
table of the live versions' apps, replaced as a whole whenever the container's
chains are (:meth:`Container._rebuild`): a reload swaps a plugin's routes at the
same moment as its hooks, an unload takes them away. Each request is counted on
the version that serves it, so a replaced version is destroyed only once its
requests in flight have finished (as its hook calls must).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from starlette.routing import BaseRoute, Mount, Router
from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from servletkit.container.versions import PluginVersion

PREFIX: Final = "/_servletkit/plugins"
"""Where plugin ``NAME``'s routes are: ``PREFIX/NAME/...``."""


def routes_app(name: str, answer: Any) -> ASGIApp | None:
    """The ASGI app of plugin ``name``'s ``servlet_routes`` ``answer``; ``None`` for none.

    A list (or tuple) of Starlette routes becomes a router; anything callable is
    taken as an ASGI app. Raises :class:`TypeError` naming what was got otherwise.
    """
    if answer is None:
        return None
    if isinstance(answer, (list, tuple)):
        odd = [route for route in answer if not isinstance(route, BaseRoute)]
        if odd:
            raise TypeError(f"plugin {name!r}: servlet_routes must return Starlette routes "
                            f"(Route, Mount, WebSocketRoute) or an ASGI app; the list holds "
                            f"{odd[0]!r}")
        router = Router(routes=list(answer))
        router.redirect_slashes = False  # as the container's own routes: a 404, no 307
        return router
    if callable(answer):
        return answer  # type: ignore[no-any-return]
    raise TypeError(f"plugin {name!r}: servlet_routes must return a list of Starlette routes "
                    f"or an ASGI app, not {type(answer).__name__}")


class _Counted:
    """A version's app that counts its requests in flight on the version."""

    def __init__(self, version: PluginVersion, app: ASGIApp) -> None:
        self.version = version
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.version.requests += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.version.requests -= 1


class PluginRoutes:
    """The ASGI app mounted at :data:`PREFIX`: each live plugin's routes under its name.

    Requests wait for ``ready`` (the plugins' init at start); an unknown plugin or
    path is the container's Matrix 404.
    """

    def __init__(self, ready: asyncio.Event) -> None:
        self._ready = ready
        self._router = self._build({})

    @staticmethod
    def _build(versions: Mapping[str, PluginVersion]) -> Router:
        router = Router(routes=[Mount(f"/{name}", app=_Counted(version, version.http))
                                for name, version in sorted(versions.items())
                                if version.http is not None])
        router.redirect_slashes = False
        return router

    def update(self, versions: Mapping[str, PluginVersion]) -> None:
        """Serve the routes of ``versions`` (plugin name → live version) from now on."""
        self._router = self._build(versions)

    @property
    def plugins(self) -> list[str]:
        """The plugins whose routes are served."""
        return [route.path.lstrip("/") for route in self._router.routes
                if isinstance(route, Mount)]

    def mount(self) -> Mount:
        """The route the container's app serves this under."""
        return Mount(PREFIX, app=self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan" and not self._ready.is_set():
            await self._ready.wait()
        await self._router(scope, receive, send)
