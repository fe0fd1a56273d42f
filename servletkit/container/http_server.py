"""How ``servletkit run`` and ``servletkit dev`` serve the container: uvicorn, hardened,
on the fast event loop and HTTP parser.

:func:`uvicorn_config` is the one set-up both commands use: the access log
without query strings, a deadline for a request's headers, and the keep-alive
of ``[server]``. uvloop and httptools are servletkit's dependencies where the
platform has wheels (pyproject's environment markers); where either is not
importable, uvicorn falls back to asyncio's loop and h11, and so does
:func:`loop_factory`. :func:`serving_stack` says which the running process uses
(``/_servletkit/health``).

The header deadline and the access log filter are the wires' too (the policy wire's
listener): they live in :mod:`servletkit.wires.http`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from servletkit.wires.http import OpenConnections, hardened_config
from servletkit.wires.metrics import metrics_for

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp

    from servletkit.container.runtime import Container


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """A new event loop as uvicorn's ``loop="auto"`` picks it: uvloop's where importable, else
    asyncio's; for the commands that run their own loop (``servletkit dev``)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def serving_stack() -> dict[str, str]:
    """The running event loop's package (``uvloop`` or ``asyncio``) and uvicorn's HTTP
    parser (``httptools`` or ``h11``, what its ``http="auto"`` chose at import)."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    loop_package = type(asyncio.get_running_loop()).__module__.partition(".")[0]
    http = "httptools" if AutoHTTPProtocol.__name__.startswith("HttpTools") else "h11"
    return {"loop": loop_package, "http": http}


def uvicorn_config(container: Container, app: ASGIApp, *, host: str, port: int,
                   log_config: dict[str, Any] | None) -> uvicorn.Config:
    """uvicorn's config for ``container``'s ``app`` on ``host:port``, hardened by its
    ``[server]``; its open connections are reported as ``servletkit_wire_connections``
    of the ``server`` wire when ``[server] metrics`` is on.

    ``log_config``: uvicorn's logging set-up (``servletkit run``), or ``None`` to leave
    logging as the caller set it up (``servletkit dev``). Either way the access log's
    lines lose their query strings: the filter sits on the access logger itself,
    after uvicorn has configured logging.
    """
    connections = OpenConnections()
    metrics = metrics_for(container)
    if metrics is not None:
        metrics.count_connections("server", connections)
    return hardened_config(app, container.config.server, connections, host=host, port=port,
                           lifespan="on", log_config=log_config,
                           log_level="info" if log_config is not None else None)
