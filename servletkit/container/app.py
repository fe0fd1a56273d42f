"""The container's ASGI application: built once from its wires.

Start order: the wires' routes are mounted and their lifespans entered (the
module wire's listener opens) *before* the plugins' ``servlet_init`` runs, in
the background, so that a plugin's own homeserver calls during init are
answered; what needs the plugins waits for :attr:`Container.ready`. Stop
order: the wires drain and close, then the plugins' ``servlet_destroy`` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from servletkit.container.admin import admin_routes
from servletkit.container.http_server import serving_stack
from servletkit.container.runtime import Container
from servletkit.wires import Wire, WireFactory
from servletkit.wires.appservice.wire import appservice_wire
from servletkit.wires.errors import EXCEPTION_HANDLERS
from servletkit.wires.metrics import metrics_routes
from servletkit.wires.module.listener import module_wire
from servletkit.wires.policy.wire import policy_wire

WIRES: list[WireFactory] = [appservice_wire, module_wire, policy_wire]
"""The wires every container may run; each factory gives ``None`` when its config is off."""

SETTLE_TIMEOUT_S: Final = 2.0
"""How long the plugins' start waits for the homeserver to connect to the wires (Synapse's
module retries at least every second)."""


def health_routes(container: Container) -> list[BaseRoute]:
    """``GET /_servletkit/health``: 200 once the plugins are live (which ones, which
    failed, and the event loop and HTTP parser serving them), 503 while their
    ``servlet_init`` still runs."""

    async def health(request: Request) -> JSONResponse:
        if not container.ready.is_set():
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse(
            {
                "status": "ok",
                "plugins": container.live_plugins,
                "failed": sorted({error.plugin for error in container.errors}),
                "server": serving_stack(),
            }
        )

    return [Route("/_servletkit/health", health, methods=["GET"])]


def container_wires(
    container: Container, factories: Sequence[WireFactory] | None = None
) -> list[Wire]:
    """The wires the container's config turns on."""
    found = (factory(container) for factory in (WIRES if factories is None else factories))
    return [wire for wire in found if wire is not None]


def build_app(
    container: Container,
    wires: Sequence[Wire] | None = None,
    *,
    homeserver_started: asyncio.Event | None = None,
) -> Starlette:
    """The ASGI app for ``container`` (and its configured wires, unless ``wires`` are given).

    Its lifespan enters the wires, starts the plugins once the wires have settled
    (at most :data:`SETTLE_TIMEOUT_S`), and on the way out stops them in the reverse
    order. A caller that starts the homeserver itself (``servletkit dev``) passes
    ``homeserver_started`` and sets it once the homeserver answers: the settling
    waits for it first.
    """
    wires = container_wires(container) if wires is None else wires

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await container.store.open()  # the wires read it from their first request
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(container.stop)  # also closes the store
            for wire in wires:
                await stack.enter_async_context(wire.lifespan())
            starting = asyncio.create_task(_start(container, wires, homeserver_started))
            stack.push_async_callback(_settle, starting)
            yield

    # the wires' routes first: Starlette tries routes in order, and a homeserver's
    # transactions are most of the requests (their paths overlap none of the others)
    routes = [*(route for wire in wires for route in wire.routes()), *health_routes(container),
              *metrics_routes(container), *admin_routes(container), container.http.mount()]
    app = Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)
    # no 307 from '/thirdparty/user/' to '/thirdparty/user': a homeserver does not follow
    # it to another endpoint; an unknown path is a Matrix 404 instead
    app.router.redirect_slashes = False
    return app


async def _start(
    container: Container, wires: Sequence[Wire], homeserver_started: asyncio.Event | None
) -> None:
    if homeserver_started is not None:
        await homeserver_started.wait()
    await asyncio.gather(*(wire.settled(SETTLE_TIMEOUT_S) for wire in wires))
    await container.start()


async def _settle(starting: asyncio.Task[None]) -> None:
    """At shutdown: stop a ``servlet_init`` still running (its errors are the container's)."""
    starting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await starting
