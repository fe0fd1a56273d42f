"""Talking to other homeservers: where a server is, its keys, signed requests.

:class:`FederationClient` resolves a server name to where it serves federation
(``[policy] server_urls`` first, then the spec's discovery:
:mod:`servletkit.wires.policy.discovery`), signs its own requests with X-Matrix, and keeps the
verify keys of the servers that call it (:meth:`FederationClient.verify_key`),
fetched from ``/_matrix/key/v2/server``, checked against their own signature,
and cached until they expire.

A caller names the server to fetch keys from (its X-Matrix ``origin``, an event's
sender) before anything is verified, so that outbound work is bounded: at most
``max_key_fetches`` servers' keys (their discovery included) are fetched at once, each
fetch within :data:`KEY_FETCH_DEADLINE_S`; a caller that needs one more is told to come
back (:class:`FetchesBusy`). Servers whose keys are already known are not affected. The
keys of at most ``known_servers`` servers, and the failures of as many, are kept
(least recently used forgotten first): invented names cannot grow memory, nor push
out the keys of the servers that work.

Fairness: server names are the caller's choice (a wildcard DNS record or an IP with any
port gives an attacker as many as it likes), so a limit per name cannot keep an attacker
whose servers never answer from holding every slot. Instead, servers with a member in a
room the wire serves (:meth:`FederationClient.note_room_server`: the rooms' ``via``
servers, the state at a join, and the events such servers send) may use every slot, and
the others, strangers, at most :func:`stranger_slots` of them: a flood of invented names
leaves the other slots to the servers of the rooms.
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

from servletkit.wires.policy.discovery import (
    Destination,
    Discovery,
    SrvLookup,
    dns_srv,
    get_json,
)
from servletkit.wires.policy.lru import Lru
from servletkit.wires.policy.xmatrix import AuthError, authorization

log = logging.getLogger("servletkit.policy_wire")

KEY_CACHE_MIN_S: Final = 60.0
"""Keys are kept at least this long, and an unknown key ID refetched at most this often."""
KEY_CACHE_MAX_S: Final = 24 * 3600.0
"""... and at most this long, whatever ``valid_until_ts`` says."""
KEY_FETCH_TIMEOUT_S: Final = 10.0
KEYS_MAX_BYTES: Final = 256 * 1024
"""The largest ``/_matrix/key/v2/server`` answer read (a few keys take a few hundred bytes)."""
KEY_FETCH_DEADLINE_S: Final = 30.0
"""One server's discovery and key fetch, all told (a slow trickle cannot hold a slot)."""
MAX_KEY_FETCHES: Final = 16
"""The default of ``[policy] max_key_fetches``: servers whose keys are fetched at once."""
KNOWN_SERVERS: Final = 10_000
"""Servers whose keys are kept; and, apart, servers whose last fetch failed."""
BUSY_RETRY_MS: Final = 2000
"""What a caller turned away by :class:`FetchesBusy` is told to wait."""
REQUEST_TIMEOUT_S: Final = 30.0
"""Our own requests (make_join, send_join) wait at most this long."""


def stranger_slots(max_key_fetches: int) -> int:
    """How many of the ``max_key_fetches`` slots servers not known to be in a served room
    may hold at once: half, rounded up (all of a single slot); the rest is kept for the
    rooms' servers."""
    return max_key_fetches - max_key_fetches // 2


class FederationError(Exception):
    """A request to another server failed: the message says which and why."""


class FetchesBusy(Exception):
    """Fetching this server's keys would exceed ``max_key_fetches``: try again in
    ``retry_after_ms`` (the endpoints answer 429 ``M_LIMIT_EXCEEDED``)."""

    def __init__(self, server_name: str, retry_after_ms: int = BUSY_RETRY_MS) -> None:
        super().__init__(f"too many servers' keys are being fetched at once to fetch those "
                         f"of {server_name} now; try again in {retry_after_ms} ms")
        self.retry_after_ms = retry_after_ms


class FederationClient:
    """Our side of federation: signed requests out, caller keys in."""

    def __init__(
        self,
        server_name: str,
        signing_key: SigningKey,
        http: httpx.AsyncClient,
        server_urls: Mapping[str, str] | None = None,
        srv: SrvLookup = dns_srv,
        max_key_fetches: int = MAX_KEY_FETCHES,
        known_servers: int = KNOWN_SERVERS,
    ) -> None:
        self.server_name = server_name
        self._key = signing_key
        self._http = http
        self._urls = {name: url.rstrip("/") for name, url in (server_urls or {}).items()}
        self._keys: Lru[str, tuple[dict[str, VerifyKey], float, float]] = Lru(known_servers)
        """server name -> (its keys, when they expire, when they were last fetched)"""
        self._failed: Lru[str, float] = Lru(known_servers)
        """server name -> when a fetch of its keys last failed (for one it has no keys of)"""
        self._fetching: dict[str, asyncio.Future[None]] = {}
        self._max_fetches = max_key_fetches
        self._room_servers: Lru[str, bool] = Lru(known_servers)
        """servers with a member in a served room (as far as its events said)"""
        self._strangers = 0  # fetches in flight for servers not in _room_servers
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

    def note_room_server(self, server_name: str) -> None:
        """``server_name`` has a member in a room the wire serves (a received event says
        so): fetches of its keys may use every slot, not only the strangers' share."""
        self._room_servers.put(server_name, True)

    def is_room_server(self, server_name: str) -> bool:
        """Whether :meth:`note_room_server` was told of ``server_name`` (and not forgotten)."""
        return self._room_servers.get(server_name) is not None

    async def verify_key(self, server_name: str, key_id: str) -> VerifyKey:
        """``server_name``'s verify key ``key_id`` (cached); :class:`AuthError` if unknown,
        :class:`FetchesBusy` if it must be fetched and too many fetches run already."""
        cached = self._keys.get(server_name)
        now = time.monotonic()
        if cached is not None and now < cached[1]:
            keys, _, fetched = cached
            if key_id in keys:
                return keys[key_id]
            if now - fetched < KEY_CACHE_MIN_S:
                raise AuthError(f"{server_name} has no key {key_id}")
        elif (failed := self._failed.get(server_name)) is not None and (
                now - failed < KEY_CACHE_MIN_S):
            raise AuthError(f"the keys of {server_name} cannot be fetched (tried less than "
                            f"{KEY_CACHE_MIN_S:.0f} s ago)")
        await self._fetch_keys(server_name)
        keys = (self._keys.get(server_name) or ({}, 0.0, 0.0))[0]
        if key_id not in keys:
            raise AuthError(f"{server_name} has no key {key_id} (or its keys cannot be fetched)")
        return keys[key_id]

    async def _fetch_keys(self, server_name: str) -> None:
        """Fetch and check ``server_name``'s keys; concurrent callers share one fetch."""
        if (pending := self._fetching.get(server_name)) is not None:
            await asyncio.shield(pending)
            return
        stranger = not self.is_room_server(server_name)
        if len(self._fetching) >= self._max_fetches or (
                stranger and self._strangers >= stranger_slots(self._max_fetches)):
            raise FetchesBusy(server_name)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._fetching[server_name] = future
        self._strangers += stranger
        try:
            async with asyncio.timeout(KEY_FETCH_DEADLINE_S):
                keys, valid_until_s = await self._download_keys(server_name)
            now = time.monotonic()
            lifetime = min(max(valid_until_s - time.time(), KEY_CACHE_MIN_S), KEY_CACHE_MAX_S)
            self._keys.put(server_name, (keys, now + lifetime, now))
            self._failed.pop(server_name)
        except (FederationError, TimeoutError) as exc:
            log.warning("policy wire: cannot fetch the keys of %s: %s", server_name,
                        exc if str(exc) else f"not within {KEY_FETCH_DEADLINE_S:.0f} s")
            now = time.monotonic()
            if (known := self._keys.get(server_name)) is not None and now < known[1]:
                self._keys.put(server_name, (known[0], known[1], now))  # keys still valid
            else:
                self._failed.put(server_name, now)
        finally:
            del self._fetching[server_name]
            self._strangers -= stranger
            future.set_result(None)

    async def _download_keys(self, server_name: str) -> tuple[dict[str, VerifyKey], float]:
        where = await self.destination(server_name)
        url = f"{where.base_url}/_matrix/key/v2/server"
        try:
            response, body = await get_json(self._http, url, KEYS_MAX_BYTES,
                                            timeout=KEY_FETCH_TIMEOUT_S, **where.options())
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
