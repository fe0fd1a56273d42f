"""Media: Matrix files ↔ links with XEP-0066 out-of-band data (``jabber:x:oob``).

Matrix → XMPP: an ``m.image``/``m.file``/``m.video``/``m.audio`` becomes a message
whose body is a link to the file and which carries the same URL as out-of-band
data (XMPP clients show it inline when the body is exactly that URL); a caption
goes in the OOB ``desc``. The link is, with ``media_url`` set, the gateway's own
route ``{media_url}/media/{token}/{filename}``: the token is an HMAC of the event
ID (keyed with the component secret), recorded as ``media/<token>`` → the
``mxc://`` URI, so only files that crossed the gateway can be fetched, and the
gateway downloads them with the appservice's token from the homeserver's
authenticated media API (Synapse ≥ 1.120 serves new media only there by
default). Without ``media_url`` the link is the homeserver's legacy
``/_matrix/media/v3/download/{server}/{id}/{filename}`` (which works only with
``enable_authenticated_media: false`` on Synapse).

XMPP → Matrix: a message with OOB data, or whose body is only an ``http(s)`` URL
ending in an image extension, is fetched (at most :data:`MAX_BYTES`, within
:data:`FETCH_TIMEOUT`, no redirects, and not from loopback or private addresses
unless ``fetch_private_media``; the connection goes to the address that was
checked, :mod:`~servletkit_xmpp_gateway.pinned`), uploaded to the media repository as the
sender's virtual user and sent as an ``m.image``/``m.video``/``m.audio``/``m.file``
(a Matrix client shows only ``mxc://`` URLs). If that fails, the message is sent
as its text, the link included.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import mimetypes
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import httpx
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from servletkit.wires.appservice.homeserver import q
from servletkit_xmpp_gateway import pinned

if TYPE_CHECKING:
    from starlette.requests import Request

    from servletkit_xmpp_gateway.core import BridgeCore

MEDIA_TYPES = ("m.image", "m.file", "m.video", "m.audio")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".avif", ".bmp", ".heic")
MAX_BYTES = 20 * 1024 * 1024  # the largest file fetched from an XMPP link
FETCH_TIMEOUT = 30.0  # seconds to fetch one
INLINE = ("image/", "video/", "audio/")  # served inline (SVG is not: it may hold scripts)


class MediaFetchError(Exception):
    """An XMPP link that cannot be fetched as a file (the reason)."""


# -- Matrix → XMPP ------------------------------------------------------------------------

async def link_out(bridge: BridgeCore, event_id: str,
                   content: dict[str, Any]) -> tuple[str, str] | None:
    """The link XMPP users fetch Matrix file ``content`` from and its description
    (a caption, else the file name); ``None`` if ``content`` is no unencrypted file."""
    mxc = content.get("url")
    if content.get("msgtype") not in MEDIA_TYPES or not isinstance(mxc, str):
        return None
    server, _, media_id = mxc.removeprefix("mxc://").partition("/")
    if not mxc.startswith("mxc://") or not server or not media_id:
        return None
    body = content.get("body") if isinstance(content.get("body"), str) else None
    filename = str(content.get("filename") or body or "file")
    if not bridge.config.media_url:
        link = (f"{bridge.hs.base_url}/_matrix/media/v3/download/{q(server)}/{q(media_id)}/"
                f"{q(filename)}")
        return link, body or filename
    info = content.get("info")
    mimetype = info.get("mimetype") if isinstance(info, dict) else None
    token = _token(bridge.config.component_secret, event_id)
    await bridge.store.put(f"media/{token}", {"mxc": mxc, "mimetype": mimetype})
    return f"{bridge.config.media_url.rstrip('/')}/media/{token}/{q(filename)}", body or filename


def _token(secret: str, event_id: str) -> str:
    digest = hmac.new(secret.encode(), event_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


def routes(bridge: BridgeCore) -> list[BaseRoute]:
    """The plugin's route that serves the files Matrix users sent to XMPP."""

    async def serve(request: Request) -> Response:
        token = request.path_params["token"]
        record = await bridge.store.get(f"media/{token}")
        if record is None:
            return JSONResponse({"errcode": "M_NOT_FOUND", "error": "no such file"}, 404)
        try:
            data = await bridge.hs.download_media(record["mxc"])
        except Exception as exc:
            status = getattr(exc, "status", 502)
            bridge.log.info("cannot fetch %s for XMPP: %s", record["mxc"], exc)
            return JSONResponse({"errcode": "M_NOT_FOUND" if status == 404 else "M_UNKNOWN",
                                 "error": "the homeserver did not give the file"},
                                404 if status == 404 else 502)
        mimetype = str(record.get("mimetype") or "application/octet-stream")
        inline = mimetype.startswith(INLINE) and mimetype != "image/svg+xml"
        return Response(data, media_type=mimetype, headers={
            "Content-Disposition": "inline" if inline else "attachment",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox; default-src 'none'"})

    return [Route("/media/{token}/{filename}", serve, methods=["GET"])]


# -- XMPP → Matrix ------------------------------------------------------------------------

def read(msg: Any, body: str) -> str | None:
    """The URL of the file an XMPP message shares: its OOB URL, or a body that is
    only an ``http(s)`` link to an image."""
    oob = msg.xml.find("{jabber:x:oob}x/{jabber:x:oob}url")
    url = oob.text.strip() if oob is not None and oob.text else body.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in url):
        return None
    if oob is None and not parts.path.lower().endswith(IMAGE_EXTENSIONS):
        return None
    return url


async def content_in(bridge: BridgeCore, user: str, url: str) -> dict[str, Any] | None:
    """Fetch ``url``, upload it as virtual ``user``: the Matrix content of the file;
    ``None`` (logged) if it cannot be fetched."""
    try:
        data, mimetype = await fetch(url, bridge.config.fetch_private_media)
    except (MediaFetchError, httpx.HTTPError) as exc:
        bridge.log.info("not carrying %s as a file: %s", url, exc)
        return None
    filename = unquote(urlsplit(url).path.rsplit("/", 1)[-1]) or "file"
    mxc = await bridge.hs.as_user(user).upload_media(data, mimetype, filename)
    kind = mimetype.split("/", 1)[0]
    msgtype = {"image": "m.image", "video": "m.video", "audio": "m.audio"}.get(kind, "m.file")
    return {"msgtype": msgtype, "body": filename, "filename": filename, "url": mxc,
            "info": {"mimetype": mimetype, "size": len(data)}}


async def fetch(url: str, private: bool,
                resolve: pinned.Resolve = pinned.resolve_host) -> tuple[bytes, str]:
    """The bytes at ``url`` and their media type, within the bounds; the connection goes
    to the address resolved and checked (not local unless ``private``) in one step."""
    async with (pinned.pinned_client(FETCH_TIMEOUT, not private, resolve) as http,
                http.stream("GET", url) as response):
        if response.status_code != 200:
            raise MediaFetchError(f"HTTP {response.status_code}")
        if int(response.headers.get("content-length") or 0) > MAX_BYTES:
            raise MediaFetchError(f"larger than {MAX_BYTES} bytes")
        data = bytearray()
        async for chunk in response.aiter_bytes():
            data += chunk
            if len(data) > MAX_BYTES:
                raise MediaFetchError(f"larger than {MAX_BYTES} bytes")
        declared = response.headers.get("content-type", "").split(";", 1)[0].strip()
    guessed = mimetypes.guess_type(urlsplit(url).path)[0]
    return bytes(data), declared or guessed or "application/octet-stream"
