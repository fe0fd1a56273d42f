"""The plugin's admin HTTP route, on ``127.0.0.1:<admin_port>`` (the container offers
plugins no HTTP routes of their own, so the plugin serves these itself).

Every request needs ``Authorization: Bearer <admin_token>``::

    GET  /_policy_server/audit?limit=N   {"decisions": [...newest N, oldest first]}
    GET  /_policy_server/rules           {"rules": [...], "dry_run": ..., "policy_lists": ...}
    PUT  /_policy_server/dry_run         body {"dry_run": true|false} → {"dry_run": ...}

Errors are Matrix-style: 401 ``M_MISSING_TOKEN``/``M_UNKNOWN_TOKEN``, 400
``M_BAD_JSON``/``M_INVALID_PARAM``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from servletkit.wires.errors import EXCEPTION_HANDLERS, MatrixError

if TYPE_CHECKING:
    from servletkit.store import PluginStore
    from servletkit_policy_server import PolicyServer

PREFIX = "/_policy_server"
MAX_AUDIT_LIMIT = 1000


def _authorize(request: Request, token: str) -> None:
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise MatrixError(401, "M_MISSING_TOKEN",
                          "send admin_token as 'Authorization: Bearer TOKEN'")
    if not hmac.compare_digest(presented.strip().encode(), token.encode()):
        raise MatrixError(401, "M_UNKNOWN_TOKEN", "wrong admin_token")


def admin_app(plugin: PolicyServer, store: PluginStore) -> Starlette:
    """The admin routes over ``plugin`` and its store."""
    token = plugin.settings.admin_token

    def guarded(handler: Callable[[Request], Awaitable[Any]]
                ) -> Callable[[Request], Awaitable[JSONResponse]]:
        async def endpoint(request: Request) -> JSONResponse:
            _authorize(request, token)
            return JSONResponse(await handler(request))
        return endpoint

    async def audit(request: Request) -> Any:
        raw = request.query_params.get("limit", "100")
        if not raw.isdigit() or not 0 < int(raw) <= MAX_AUDIT_LIMIT:
            raise MatrixError(400, "M_INVALID_PARAM",
                              f"limit: a whole number from 1 to {MAX_AUDIT_LIMIT}, not {raw!r}")
        return {"decisions": await plugin.audit.newest(store, int(raw))}

    async def rules(request: Request) -> Any:
        return await plugin.describe(store)

    async def dry_run(request: Request) -> Any:
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise MatrixError(400, "M_BAD_JSON", "the body must be JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("dry_run"), bool):
            raise MatrixError(400, "M_INVALID_PARAM", 'send {"dry_run": true} or false')
        await plugin.set_dry_run(store, body["dry_run"])
        return {"dry_run": body["dry_run"]}

    return Starlette(routes=[
        Route(f"{PREFIX}/audit", guarded(audit), methods=["GET"]),
        Route(f"{PREFIX}/rules", guarded(rules), methods=["GET"]),
        Route(f"{PREFIX}/dry_run", guarded(dry_run), methods=["PUT"]),
    ], exception_handlers=EXCEPTION_HANDLERS)


@contextlib.asynccontextmanager
async def serving(app: Starlette, port: int) -> AsyncIterator[None]:
    """Serve ``app`` on 127.0.0.1:``port`` while the context lasts."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"[plugins.policy_server] admin_port: cannot listen on "
                                 f"127.0.0.1:{port}: {exc.strerror}") from None
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)  # serve() would add signal handlers
    await server.startup(sockets=[sock])
    ticking = asyncio.create_task(server.main_loop())
    try:
        yield
    finally:
        server.should_exit = True
        await ticking
        await server.shutdown(sockets=[sock])
