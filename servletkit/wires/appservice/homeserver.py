"""The homeserver client on ``context.homeserver``: act in Matrix as the appservice.

:class:`HomeserverClient` speaks the client-server API with the appservice's
``as_token``. It acts as the appservice's own user (``@sender_localpart:server``)
or, through :meth:`HomeserverClient.as_user`, as any virtual user in the
appservice's namespace (the Application Service API's ``?user_id=``
masquerading). Every clone shares one ``httpx.AsyncClient``, so connections are
kept alive and reused.

Every non-2xx answer raises :class:`MatrixRequestError` with the homeserver's
``errcode``. A ``429`` is retried after the homeserver's ``retry_after_ms`` (or
its ``Retry-After`` header), a bounded number of times and within a bounded
total wait. The token travels only in the ``Authorization`` header and is never
logged or shown in an error.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

log = logging.getLogger("servletkit.homeserver")

CLIENT = "/_matrix/client/v3"
MEDIA_UPLOAD = "/_matrix/media/v3/upload"
MEDIA_DOWNLOAD = "/_matrix/client/v1/media/download"


class MatrixRequestError(Exception):
    """The homeserver answered a request with a non-2xx status.

    ``status`` is the HTTP status, ``errcode`` and ``error`` come from the
    Matrix error body (``M_UNKNOWN`` and the raw text when the body is not a
    Matrix error), ``body`` is the decoded JSON body (or the text).
    """

    def __init__(self, method: str, path: str, status: int, errcode: str, error: str,
                 body: Any = None) -> None:
        super().__init__(f"{method} {path} -> {status} {errcode}: {error}")
        self.method = method
        self.path = path
        self.status = status
        self.errcode = errcode
        self.error = error
        self.body = body


def q(part: str) -> str:
    """Percent-encode one path parameter (room IDs, aliases, event IDs contain ``!#$:/``)."""
    return quote(part, safe="")


class HomeserverClient:
    """The client-server API, authenticated as an appservice.

    ``base_url`` is the homeserver's client-server URL (``http://127.0.0.1:8008``);
    ``server_name`` is the part after ``:`` in its user IDs. Pass ``http`` to
    share an existing ``httpx.AsyncClient`` (the caller then closes it);
    otherwise the client makes its own and :meth:`aclose` closes it.
    ``max_retries`` and ``max_retry_wait`` (seconds) bound the ``429`` retries
    of one request; each waits ``retry_after_ms``, else ``Retry-After``, else 1 s.
    """

    def __init__(
        self,
        base_url: str,
        as_token: str,
        server_name: str,
        sender_localpart: str,
        *,
        http: httpx.AsyncClient | None = None,
        max_retries: int = 5,
        max_retry_wait: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.server_name = server_name
        self.sender_localpart = sender_localpart
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self._headers = {"Authorization": f"Bearer {as_token}"}
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0))
        self._user_id = f"@{sender_localpart}:{server_name}"
        self._registered: set[str] = set()  # shared by clones: ensure_registered's memory

    def __repr__(self) -> str:
        return f"<HomeserverClient {self.base_url} as {self._user_id}>"

    @property
    def user_id(self) -> str:
        """The user this client acts as (the appservice's own user unless :meth:`as_user`)."""
        return self._user_id

    @property
    def is_sender(self) -> bool:
        """Whether this client acts as the appservice's own user (no masquerading)."""
        return self._user_id == f"@{self.sender_localpart}:{self.server_name}"

    def as_user(self, user_id: str) -> HomeserverClient:
        """A client acting as ``user_id`` (a virtual user of the appservice), same connections.

        The homeserver only lets the appservice act as users in its namespace
        that are registered (see :meth:`register`); otherwise requests fail
        with ``403 M_FORBIDDEN``.
        """
        if not (user_id.startswith("@") and ":" in user_id):
            raise ValueError(f"as_user needs a full user ID like '@name:server', got {user_id!r}")
        clone = copy.copy(self)
        clone._user_id = user_id
        return clone

    async def aclose(self) -> None:
        """Close the connection pool shared by this client and its clones (if it owns it)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> HomeserverClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the general request -------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        """Send one client-server request as :attr:`user_id`; return the JSON body
        (whatever JSON the endpoint answers: an object, or an array for
        ``GET /rooms/{roomId}/state``).

        ``path`` starts with ``/_matrix/``; quote path parameters with :func:`q`.
        Raises :class:`MatrixRequestError` for a non-2xx status (after
        retrying ``429`` within the bounds) and ``httpx.TransportError`` when
        the homeserver cannot be reached.
        """
        response = await self._send(method, path, json=json, params=params)
        return _json_body(method, path, response)

    async def _object(
        self, method: str, path: str, *, json: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """:meth:`request` for an endpoint that answers a JSON object."""
        body = await self.request(method, path, json=json, params=params)
        if not isinstance(body, dict):
            raise MatrixRequestError(method, path, 200, "M_NOT_JSON",
                                     f"expected a JSON object, got {type(body).__name__}", body)
        return body

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        query = dict(params or {})
        if not self.is_sender:
            query["user_id"] = self._user_id
        waited = 0.0
        for attempt in range(self.max_retries + 1):
            response = await self._http.request(
                method, self.base_url + path, json=json, params=query, content=content,
                headers={**self._headers, **(headers or {})},
            )
            log.debug("%s %s as %s -> %d", method, path, self._user_id, response.status_code)
            if response.status_code != 429:
                break
            delay = _retry_after(response)
            if attempt == self.max_retries or waited + delay > self.max_retry_wait:
                break
            log.info("%s %s as %s rate limited (429); retrying in %.3f s",
                     method, path, self._user_id, delay)
            await asyncio.sleep(delay)
            waited += delay
        if not response.is_success:
            raise _error(method, path, response)
        return response

    # -- users ---------------------------------------------------------------

    async def register(self, localpart: str) -> str:
        """Register the virtual user ``@localpart:server``; return its user ID.

        Idempotent: a user that already exists (``M_USER_IN_USE``) counts as
        registered. A localpart outside the appservice's namespace raises
        ``M_EXCLUSIVE``.
        """
        user_id = f"@{localpart}:{self.server_name}"
        body = {"type": "m.login.application_service", "username": localpart,
                "inhibit_login": True}
        try:
            await self.as_sender().request("POST", f"{CLIENT}/register", json=body)
        except MatrixRequestError as exc:
            if exc.errcode != "M_USER_IN_USE":
                raise
        self._registered.add(user_id)
        return user_id

    async def ensure_registered(self) -> None:
        """Register :attr:`user_id` unless this client (or a clone) already did."""
        if self._user_id not in self._registered:
            await self.register(self._user_id[1:].split(":", 1)[0])

    def as_sender(self) -> HomeserverClient:
        """A client acting as the appservice's own user, same connections."""
        return self.as_user(f"@{self.sender_localpart}:{self.server_name}")

    async def whoami(self) -> str:
        """The user ID the homeserver sees for this client."""
        return str((await self._object("GET", f"{CLIENT}/account/whoami"))["user_id"])

    async def set_displayname(self, displayname: str) -> None:
        """Set :attr:`user_id`'s display name."""
        await self.request("PUT", f"{CLIENT}/profile/{q(self._user_id)}/displayname",
                           json={"displayname": displayname})

    async def set_avatar_url(self, avatar_url: str) -> None:
        """Set :attr:`user_id`'s avatar (an ``mxc://`` URI, e.g. from :meth:`upload_media`)."""
        await self.request("PUT", f"{CLIENT}/profile/{q(self._user_id)}/avatar_url",
                           json={"avatar_url": avatar_url})

    async def get_profile(self, user_id: str | None = None) -> dict[str, Any]:
        """The profile (``displayname``, ``avatar_url``) of ``user_id`` (default: this user)."""
        return await self._object("GET", f"{CLIENT}/profile/{q(user_id or self._user_id)}")

    # -- rooms ---------------------------------------------------------------

    async def create_room(self, *, alias_localpart: str | None = None, **body: Any) -> str:
        """Create a room as :attr:`user_id`; return its room ID.

        ``alias_localpart`` gives it the alias ``#alias_localpart:server``
        (``room_alias_name``); other keywords are the ``/createRoom`` body
        (``name``, ``preset``, ``invite``, ``initial_state``, ...).
        """
        if alias_localpart is not None:
            body["room_alias_name"] = alias_localpart
        return str((await self._object("POST", f"{CLIENT}/createRoom", json=body))["room_id"])

    async def join(self, room_id_or_alias: str, *, via: tuple[str, ...] = ()) -> str:
        """Join a room by ID or alias as :attr:`user_id`; return the room ID."""
        params = {"via": list(via)} if via else None
        answer = await self._object("POST", f"{CLIENT}/join/{q(room_id_or_alias)}",
                                    json={}, params=params)
        return str(answer["room_id"])

    async def invite(self, room_id: str, user_id: str, reason: str | None = None) -> None:
        """Invite ``user_id`` into ``room_id``."""
        await self.request("POST", f"{CLIENT}/rooms/{q(room_id)}/invite",
                           json=_with_reason({"user_id": user_id}, reason))

    async def leave(self, room_id: str, reason: str | None = None) -> None:
        """Leave ``room_id`` as :attr:`user_id`."""
        await self.request("POST", f"{CLIENT}/rooms/{q(room_id)}/leave",
                           json=_with_reason({}, reason))

    # -- events --------------------------------------------------------------

    async def send_event(
        self,
        room_id: str,
        event_type: str,
        content: Mapping[str, Any],
        *,
        txn_id: str | None = None,
        ts: int | None = None,
    ) -> str:
        """Send a message event; return its event ID.

        ``txn_id`` makes retries idempotent (the homeserver answers a repeated
        id with the first event); a fresh one is made when omitted. ``ts``
        (milliseconds since the epoch) sets ``origin_server_ts``, for bridges
        that carry the remote network's timestamps.
        """
        path = f"{CLIENT}/rooms/{q(room_id)}/send/{q(event_type)}/{q(txn_id or _txn_id())}"
        answer = await self._object("PUT", path, json=dict(content), params=_ts(ts))
        return str(answer["event_id"])

    async def send_message(self, room_id: str, body_or_content: str | Mapping[str, Any],
                           **send: Any) -> str:
        """Send an ``m.room.message``: a plain ``m.text`` body, or full content.

        ``send`` takes :meth:`send_event`'s ``txn_id`` and ``ts``.
        """
        content = ({"msgtype": "m.text", "body": body_or_content}
                   if isinstance(body_or_content, str) else body_or_content)
        return await self.send_event(room_id, "m.room.message", content, **send)

    async def send_state(
        self,
        room_id: str,
        event_type: str,
        state_key: str,
        content: Mapping[str, Any],
        *,
        ts: int | None = None,
    ) -> str:
        """Set a state event; return its event ID. ``ts`` as in :meth:`send_event`."""
        path = f"{CLIENT}/rooms/{q(room_id)}/state/{q(event_type)}/{q(state_key)}"
        answer = await self._object("PUT", path, json=dict(content), params=_ts(ts))
        return str(answer["event_id"])

    async def redact(self, room_id: str, event_id: str, reason: str | None = None, *,
                     txn_id: str | None = None) -> str:
        """Redact ``event_id``; return the redaction's event ID."""
        path = f"{CLIENT}/rooms/{q(room_id)}/redact/{q(event_id)}/{q(txn_id or _txn_id())}"
        answer = await self._object("PUT", path, json=_with_reason({}, reason))
        return str(answer["event_id"])

    async def get_event(self, room_id: str, event_id: str) -> dict[str, Any]:
        """One event of ``room_id``, as :attr:`user_id` may see it."""
        return await self._object("GET", f"{CLIENT}/rooms/{q(room_id)}/event/{q(event_id)}")

    async def get_state(self, room_id: str, event_type: str,
                        state_key: str = "") -> dict[str, Any]:
        """The content of one state event of ``room_id``."""
        path = f"{CLIENT}/rooms/{q(room_id)}/state/{q(event_type)}/{q(state_key)}"
        return await self._object("GET", path)

    async def get_room_state(self, room_id: str) -> list[dict[str, Any]]:
        """Every current state event of ``room_id`` (the endpoint answers a JSON array)."""
        state: list[dict[str, Any]] = await self.request(
            "GET", f"{CLIENT}/rooms/{q(room_id)}/state")
        return state

    async def room_messages(self, room_id: str, *, direction: str = "b", limit: int = 50,
                            start: str | None = None) -> dict[str, Any]:
        """One page of ``/messages`` (``chunk``, ``start``, ``end``), newest first by default."""
        params: dict[str, Any] = {"dir": direction, "limit": limit}
        if start is not None:
            params["from"] = start
        return await self._object("GET", f"{CLIENT}/rooms/{q(room_id)}/messages",
                                  params=params)

    # -- media ---------------------------------------------------------------

    async def upload_media(self, data: bytes, content_type: str,
                           filename: str | None = None) -> str:
        """Upload ``data``; return its ``mxc://`` URI."""
        params = {"filename": filename} if filename else None
        response = await self._send("POST", MEDIA_UPLOAD, content=data, params=params,
                                    headers={"Content-Type": content_type})
        return str(_json_body("POST", MEDIA_UPLOAD, response)["content_uri"])

    async def download_media(self, mxc_uri: str) -> bytes:
        """The bytes behind an ``mxc://server/media_id`` URI (authenticated media)."""
        server, _, media_id = mxc_uri.removeprefix("mxc://").partition("/")
        if not mxc_uri.startswith("mxc://") or not server or not media_id:
            raise ValueError(f"expected an mxc URI like 'mxc://server/id', got {mxc_uri!r}")
        path = f"{MEDIA_DOWNLOAD}/{q(server)}/{q(media_id)}"
        return (await self._send("GET", path)).content


def _txn_id() -> str:
    return uuid.uuid4().hex


def _ts(ts: int | None) -> dict[str, int] | None:
    return None if ts is None else {"ts": ts}


def _with_reason(body: dict[str, Any], reason: str | None) -> dict[str, Any]:
    return body if reason is None else {**body, "reason": reason}


def _retry_after(response: httpx.Response) -> float:
    """Seconds to wait before retrying a 429: ``retry_after_ms``, ``Retry-After``, else 1 s."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("retry_after_ms"), int | float):
        return max(0.0, float(body["retry_after_ms"]) / 1000)
    header = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(header))
    except ValueError:
        return 1.0


def _error(method: str, path: str, response: httpx.Response) -> MatrixRequestError:
    """The :class:`MatrixRequestError` for a non-2xx answer, whatever its body is."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    if isinstance(body, dict) and isinstance(body.get("errcode"), str):
        errcode, error = body["errcode"], str(body.get("error", ""))
    else:
        text = body if isinstance(body, str) else str(body)
        errcode, error = "M_UNKNOWN", text[:200] or response.reason_phrase
    return MatrixRequestError(method, path, response.status_code, errcode, error, body)


def _json_body(method: str, path: str, response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise MatrixRequestError(
            method, path, response.status_code, "M_NOT_JSON",
            f"expected JSON from the homeserver, got {response.text[:200]!r}", response.text,
        ) from None
