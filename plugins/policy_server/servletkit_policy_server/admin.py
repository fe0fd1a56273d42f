"""The plugin's admin routes, served by the container on its ``[server]`` listener under
``/_servletkit/plugins/policy_server/`` (hook ``servlet_routes``) when ``admin_token`` is set.

Every request needs ``Authorization: Bearer <admin_token>`` (compared in constant time)::

    GET  /_servletkit/plugins/policy_server/audit?limit=N  {"decisions": [...newest N]}
    GET  /_servletkit/plugins/policy_server/rules          {"rules": [...], "dry_run": ...,
                                                            "communities": [...]}
    PUT  /_servletkit/plugins/policy_server/dry_run        {"dry_run": true|false}

Errors are Matrix-style: 401 ``M_MISSING_TOKEN``/``M_UNKNOWN_TOKEN``, 400
``M_BAD_JSON``/``M_INVALID_PARAM`` (and the container's 404/405 for other paths).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from servletkit.wires.errors import MatrixError

if TYPE_CHECKING:
    from servletkit.store import PluginStore
    from servletkit_policy_server import PolicyServer

MAX_AUDIT_LIMIT = 1000


def _authorize(request: Request, token: str) -> None:
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise MatrixError(401, "M_MISSING_TOKEN",
                          "send admin_token as 'Authorization: Bearer TOKEN'")
    if not hmac.compare_digest(presented.strip().encode(), token.encode()):
        raise MatrixError(401, "M_UNKNOWN_TOKEN", "wrong admin_token")


def admin_routes(plugin: PolicyServer, store: PluginStore) -> list[BaseRoute]:
    """The admin routes over ``plugin`` and its store (paths relative to the plugin's)."""
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

    return [
        Route("/audit", guarded(audit), methods=["GET"]),
        Route("/rules", guarded(rules), methods=["GET"]),
        Route("/dry_run", guarded(dry_run), methods=["PUT"]),
    ]
