"""The commands' side of the admin API: reach the running container named by a config.

``servletkit reload`` and ``servletkit plugins`` call the container that serves
``[server]`` of the same ``servletkit.toml``, with the ``[admin]`` token (see
:mod:`servletkit.container.admin`). Failures are :class:`AdminUnavailable` (no
container there) or :class:`AdminRefused` (one answered but refused), each with a
message that says what to do.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from servletkit.container.admin import PREFIX, admin_token, token_path
from servletkit.container.config import Config


class AdminUnavailable(Exception):
    """No running container answers for this config."""


class AdminRefused(Exception):
    """A container answered but refused the request (another container, or a wrong token)."""


def admin_url(config: Config) -> str:
    """The admin API's base URL: the ``[server]`` listener, reached over loopback."""
    host = config.server.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.server.port}{PREFIX}"


def admin_request(config: Config, method: str, path: str, *, timeout: float = 60.0,
                  body: Any = None) -> Any:
    """Send one request to the container's admin API; return the JSON answer."""
    if not config.admin.enabled:
        raise AdminUnavailable(f"{config.path}: [admin] enabled = false: the running "
                               "container has no admin API")
    token = admin_token(config, create=False)
    if token is None:
        raise AdminUnavailable(f"no admin token in {token_path(config)}: no container has "
                               f"started with {config.path} (start one with 'servletkit run "
                               f"--config {config.path}')")
    url = admin_url(config) + path
    try:
        response = httpx.request(method, url, timeout=timeout, json=body,
                                 headers={"Authorization": f"Bearer {token}"})
    except httpx.TransportError:
        raise AdminUnavailable(f"no container answers at {url} (start one with "
                               f"'servletkit run --config {config.path}')") from None
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code in (401, 403, 404):
        why = body.get("error") if isinstance(body, dict) else None
        raise AdminRefused(f"the container at {url} refused: {why or response.status_code} "
                           "(is it running with this config?)")
    if response.status_code != 200:
        raise AdminRefused(f"the container at {url} answered {response.status_code}")
    return body


def live_table(answer: dict[str, Any]) -> str:
    """The text of ``servletkit plugins`` for a running container."""
    rows = [("NAME", "VERSION", "SINCE", "CALLS", "ERRORS", "STATUS")]
    for row in answer["plugins"]:
        since = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["since"]))
                 if row["since"] else "-")
        if row["live"]:
            status = "live"
        elif row["loaded"]:
            status = "loaded (starting)"
        else:
            status = "disabled" if not row["enabled"] else "not loaded"
        if row["draining"]:
            status += f", {row['draining']} old version(s) draining"
        if row["error"]:
            error = row["error"]
            status += f"; FAILED ({error['stage']}: {error['message']})"
        rows.append((row["name"], row["loaded_version"] or "-", since, str(row["calls"]),
                     str(row["errors"]), status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        + "  " + row[-1]
        for row in rows
    )
