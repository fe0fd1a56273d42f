"""The container's ASGI application: built once from the routes of each wire."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from servletkit.container.appservice import appservice_routes
from servletkit.container.errors import EXCEPTION_HANDLERS
from servletkit.container.module_wire import module_listener
from servletkit.container.runtime import Container

Wire = Callable[[Container], Sequence[BaseRoute]]
"""A wire contributes routes to the app, given the container."""


def health_routes(container: Container) -> list[BaseRoute]:
    """``GET /_servletkit/health``: liveness and which plugins are live."""

    async def health(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "status": "ok",
                "plugins": container.live_plugins,
                "failed": sorted({error.plugin for error in container.errors}),
            }
        )

    return [Route("/_servletkit/health", health, methods=["GET"])]


WIRES: list[Wire] = [health_routes, appservice_routes]
"""The wires every container serves, in route-matching order."""

Service = Callable[[Container], AbstractAsyncContextManager[None]]
"""Something that runs beside the routes while the app lives (a wire's own listener).

Entered after the plugins have started, left before they stop.
"""

SERVICES: list[Service] = [module_listener]
"""The services every container runs."""


def build_app(
    container: Container,
    wires: Sequence[Wire] | None = None,
    services: Sequence[Service] | None = None,
) -> Starlette:
    """The ASGI app for ``container``; its lifespan starts and stops the plugins and services."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await container.start()
        try:
            async with contextlib.AsyncExitStack() as stack:
                for service in SERVICES if services is None else services:
                    await stack.enter_async_context(service(container))
                yield
        finally:
            await container.stop()

    routes = [route for wire in (WIRES if wires is None else wires) for route in wire(container)]
    return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)
