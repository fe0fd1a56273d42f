"""The admin API: reload a plugin, read the plugins' live state (issue 13).

Served on the ``[server]`` listener under ``/_servletkit/admin/v1/``, for the
``servletkit reload`` and ``servletkit plugins`` commands::

    GET  /_servletkit/admin/v1/plugins                one row per plugin (version, since,
                                                      calls, errors, draining) and the
                                                      container's Python (for deploy)
    POST /_servletkit/admin/v1/plugins/{name}/reload  the reload's result (200 even when
                                                      the new version failed: see "ok")
    POST /_servletkit/admin/v1/plugins/{name}/unload  drain, destroy and unload it
    POST /_servletkit/admin/v1/deploy                 {"distributions": [...]} just
                                                      installed: load their plugins

A caller must be on loopback and send ``Authorization: Bearer TOKEN`` with the
``[admin]`` token (:func:`admin_token`); the token is compared in constant time
and never logged. Errors have a Matrix-style ``errcode``.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import sys
from pathlib import Path
from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from servletkit.container.config import Config
from servletkit.container.runtime import Container
from servletkit.files import write_private

PREFIX: Final = "/_servletkit/admin/v1"


def token_path(config: Config) -> Path:
    """Where the generated admin token is kept (``[admin] token_file``)."""
    return config.resolve(config.admin.token_file)


def admin_token(config: Config, *, create: bool) -> str | None:
    """The admin token: ``[admin] token``, else the one kept in ``token_file``.

    With ``create`` (the container, at start) a missing file is made with a new
    random token (mode 0600); without (a command), ``None`` if there is none.
    """
    if config.admin.token:
        return config.admin.token
    path = token_path(config)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = ""
    if token or not create:
        return token or None
    token = secrets.token_urlsafe(32)
    write_private(path, token + "\n")
    return token


def _error(status: int, errcode: str, message: str) -> JSONResponse:
    return JSONResponse({"errcode": errcode, "error": message}, status_code=status)


def _refusal(request: Request, token: bytes) -> JSONResponse | None:
    """Why the request may not use the admin API, or ``None`` if it may."""
    host = request.client.host if request.client else ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return _error(403, "M_FORBIDDEN", "the admin API answers callers on loopback only")
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return _error(401, "M_MISSING_TOKEN", "send the [admin] token as 'Authorization: "
                      "Bearer TOKEN'")
    if not hmac.compare_digest(presented.strip().encode(), token):
        return _error(401, "M_UNKNOWN_TOKEN", "wrong admin token")
    return None


def admin_routes(container: Container) -> list[BaseRoute]:
    """The admin API's routes, or none when ``[admin] enabled = false``.

    Makes the token (see :func:`admin_token`) if there is none yet.
    """
    config = container.config
    if not config.admin.enabled:
        return []
    token = (admin_token(config, create=True) or "").encode()

    async def plugins(request: Request) -> JSONResponse:
        if refused := _refusal(request, token):
            return refused
        return JSONResponse({"ready": container.ready.is_set(), "python": sys.executable,
                             "plugins": [row.as_json() for row in container.statuses()]})

    async def reload(request: Request) -> JSONResponse:
        if refused := _refusal(request, token):
            return refused
        await container.ready.wait()
        result = await container.reload(request.path_params["name"])
        return JSONResponse(result.as_json())

    async def unload(request: Request) -> JSONResponse:
        if refused := _refusal(request, token):
            return refused
        await container.ready.wait()
        return JSONResponse((await container.unload(request.path_params["name"])).as_json())

    async def deploy(request: Request) -> JSONResponse:
        if refused := _refusal(request, token):
            return refused
        try:
            body = await request.json()
        except ValueError:
            body = None
        distributions = body.get("distributions") if isinstance(body, dict) else None
        if not (isinstance(distributions, list)
                and all(isinstance(name, str) for name in distributions)):
            return _error(400, "M_BAD_JSON", 'expected {"distributions": ["name", ...]}')
        await container.ready.wait()
        results = await container.deploy(distributions)
        return JSONResponse({"results": [result.as_json() for result in results]})

    return [
        Route(f"{PREFIX}/plugins", plugins, methods=["GET"]),
        Route(f"{PREFIX}/plugins/{{name}}/reload", reload, methods=["POST"]),
        Route(f"{PREFIX}/plugins/{{name}}/unload", unload, methods=["POST"]),
        Route(f"{PREFIX}/deploy", deploy, methods=["POST"]),
    ]
