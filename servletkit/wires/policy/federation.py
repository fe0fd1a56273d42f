"""Talking to other homeservers: where a server is, its keys, signed requests.

:class:`FederationClient` resolves a server name to where it serves federation
(``[policy] server_urls`` first, then the spec's discovery:
:mod:`servletkit.wires.policy.discovery`), signs its own requests with X-Matrix, and keeps the
verify keys of the servers that call it (:meth:`FederationClient.verify_key`),
fetched from ``/_matrix/key/v2/server``, checked against their own signature,
and cached until they expire.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote

import httpx
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json
from signedjson.types import SigningKey, VerifyKey
from unpaddedbase64 import decode_base64

from servletkit.wires.policy.discovery import Destination, Discovery, SrvLookup, dns_srv
from servletkit.wires.policy.xmatrix import AuthError, authorization

log = logging.getLogger("servletkit.policy_wire")

KEY_CACHE_MIN_S: Final = 60.0
"""Keys are kept at least this long, and an unknown key ID refetched at most this often."""
KEY_CACHE_MAX_S: Final = 24 * 3600.0
"""... and at most this long, whatever ``valid_until_ts`` says."""
KEY_FETCH_TIMEOUT_S: Final = 10.0
REQUEST_TIMEOUT_S: Final = 30.0
"""Our own requests (make_join, send_join) wait at most this long."""


class FederationError(Exception):
    """A request to another server failed: the message says which and why."""


class FederationClient:
    """Our side of federation: signed requests out, caller keys in."""

    def __init__(
        self,
        server_name: str,
        signing_key: SigningKey,
        http: httpx.AsyncClient,
        server_urls: Mapping[str, str] | None = None,
        srv: SrvLookup = dns_srv,
    ) -> None:
        self.server_name = server_name
        self._key = signing_key
        self._http = http
        self._urls = {name: url.rstrip("/") for name, url in (server_urls or {}).items()}
        self._keys: dict[str, tuple[dict[str, VerifyKey], float, float]] = {}
        self._fetching: dict[str, asyncio.Future[None]] = {}
        self._discovery = Discovery(http, srv)

    async def destination(self, server_name: str) -> Destination:
        """Where ``server_name`` serves federation (``server_urls`` first, then discovery)."""
        if url := self._urls.get(server_name):
            return Destination(url)
        return await self._discovery.destination(server_name)

    async def request(
        self, method: str, destination: str, path: str, content: Any = None,
        *, base_url: str | None = None,
    ) -> Any:
        """A signed federation request; the parsed JSON answer, or :class:`FederationError`."""
        where = (Destination(base_url.rstrip("/")) if base_url
                 else await self.destination(destination))
        base, options = where.base_url, where.options()
        header = authorization(method, path, self.server_name, destination, self._key, content)
        options["headers"] = {**options.get("headers", {}), "Authorization": header}
        try:
            response = await self._http.request(
                method, base + path, json=content, timeout=REQUEST_TIMEOUT_S, **options)
        except httpx.HTTPError as exc:
            raise FederationError(f"{method} {base}{path}: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise FederationError(f"{method} {base}{path}: {response.status_code} "
                                  f"{response.text[:300]}")
        try:
            return response.json()
        except ValueError:
            raise FederationError(f"{method} {base}{path}: the answer is not JSON") from None

    async def verify_key(self, server_name: str, key_id: str) -> VerifyKey:
        """``server_name``'s verify key ``key_id`` (cached); :class:`AuthError` if unknown."""
        cached = self._keys.get(server_name)
        now = time.monotonic()
        if cached is not None:
            keys, expires, fetched = cached
            if now < expires and (key_id in keys or now - fetched < KEY_CACHE_MIN_S):
                if key_id in keys:
                    return keys[key_id]
                raise AuthError(f"{server_name} has no key {key_id}")
        await self._fetch_keys(server_name)
        keys = self._keys.get(server_name, ({}, 0.0, 0.0))[0]
        if key_id not in keys:
            raise AuthError(f"{server_name} has no key {key_id} (or its keys cannot be fetched)")
        return keys[key_id]

    async def _fetch_keys(self, server_name: str) -> None:
        """Fetch and check ``server_name``'s keys; concurrent callers share one fetch."""
        if (pending := self._fetching.get(server_name)) is not None:
            await asyncio.shield(pending)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._fetching[server_name] = future
        try:
            keys, valid_until_s = await self._download_keys(server_name)
            now = time.monotonic()
            lifetime = min(max(valid_until_s - time.time(), KEY_CACHE_MIN_S), KEY_CACHE_MAX_S)
            self._keys[server_name] = (keys, now + lifetime, now)
        except FederationError as exc:
            log.warning("policy wire: cannot fetch the keys of %s: %s", server_name, exc)
            self._keys[server_name] = ({}, time.monotonic() + KEY_CACHE_MIN_S, time.monotonic())
        finally:
            del self._fetching[server_name]
            future.set_result(None)

    async def _download_keys(self, server_name: str) -> tuple[dict[str, VerifyKey], float]:
        where = await self.destination(server_name)
        url = f"{where.base_url}/_matrix/key/v2/server"
        try:
            response = await self._http.get(url, timeout=KEY_FETCH_TIMEOUT_S, **where.options())
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise FederationError(f"GET {url}: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200 or not isinstance(body, dict):
            raise FederationError(f"GET {url}: {response.status_code}")
        return parse_server_keys(body, server_name)


def parse_server_keys(body: Mapping[str, Any], server_name: str) -> tuple[dict[str, VerifyKey],
                                                                          float]:
    """The verify keys of a ``/_matrix/key/v2/server`` answer and its ``valid_until_ts`` (s),
    after checking it is ``server_name``'s and signed by its own key."""
    if body.get("server_name") != server_name:
        raise FederationError(f"keys of {server_name!r} name {body.get('server_name')!r}")
    keys: dict[str, VerifyKey] = {}
    verify_keys = body.get("verify_keys")
    if not isinstance(verify_keys, Mapping):
        raise FederationError(f"keys of {server_name}: no verify_keys")
    for key_id, entry in verify_keys.items():
        algorithm = str(key_id).partition(":")[0]
        if algorithm != "ed25519" or not isinstance(entry, Mapping):
            continue
        try:
            keys[key_id] = decode_verify_key_bytes(key_id, decode_base64(str(entry.get("key"))))
        except Exception:  # a malformed key is skipped, whatever the error
            continue
    signed_by_own = False
    for key_id, key in keys.items():
        try:
            verify_signed_json(dict(body), server_name, key)
            signed_by_own = True
        except SignatureVerifyException:
            log.debug("keys of %s: not signed by %s", server_name, key_id)
    if not signed_by_own:
        raise FederationError(f"keys of {server_name}: not signed by any of its own keys")
    valid_until = body.get("valid_until_ts")
    valid_until_s = valid_until / 1000 if isinstance(valid_until, int) else 0.0
    return keys, valid_until_s


def path(template: str, *segments: str) -> str:
    """A federation path with each segment percent-encoded."""
    return template.format(*(quote(segment, safe="") for segment in segments))
