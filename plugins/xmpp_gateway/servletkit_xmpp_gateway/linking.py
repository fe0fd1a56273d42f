"""Account linking, the Matrix side: the bot's ``!xmpp`` commands and the HTTP form.

A Matrix user invites the gateway's bot to a DM (``botdm/<user_id>`` ↔
``botroom/<room_id>``) and sends ``!xmpp link``: the bot answers with a one-time
link, ``{media_url}/link/{token}``, valid :data:`TOKEN_TTL` seconds. There (not in
a Matrix room) the user gives their JID and password; the gateway logs in and,
if the server accepts, keeps the account linked
(:mod:`~servletkit_xmpp_gateway.accounts`). ``!xmpp status`` and ``!xmpp unlink``
do what they say. A token is ``{id}.{secret}``: the store keeps
``linktoken/<id>`` → the user, the deadline and a hash of the secret, compared in
constant time; it is deleted at its first use.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import secrets
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

from slixmpp import JID
from slixmpp.jid import InvalidJID
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from servletkit_xmpp_gateway.accounts import Credentials

if TYPE_CHECKING:
    from starlette.requests import Request

    from servletkit import Event
    from servletkit_xmpp_gateway.bridge import Bridge

TOKEN_TTL = 600  # seconds a link is valid
MAX_FORM = 4096  # bytes of a posted form
HELP = ("Commands: '!xmpp link' (speak from your own XMPP account: you get a link to a "
        "form for its JID and password; never type a password in a Matrix room), "
        "'!xmpp status', '!xmpp unlink'.")
FORM = """<!doctype html><meta charset="utf-8"><title>Link your XMPP account</title>
<h1>Link your XMPP account to {user}</h1>
<p>The gateway will log in as this account and speak for you from it in bridged group
chats and direct messages. It keeps the password, encrypted, until you send
<code>!xmpp unlink</code>, and it sees everything the account receives.</p>
<form method="post"><label>JID <input name="jid" required></label>
<label>Password <input name="password" type="password" required></label>
<button>Link</button></form>"""


async def bot_membership(bridge: Bridge, event: Event) -> None:
    """Someone invited the gateway's bot: join, and remember the room as their DM with it."""
    if event.content.get("membership") != "invite" or bridge.is_ours(event.sender):
        return
    await bridge.hs.join(event.room_id)
    await bridge.store.put(f"botroom/{event.room_id}", event.sender)
    await bridge.store.put(f"botdm/{event.sender}", event.room_id)
    await bridge.notice(event.room_id, HELP)


async def command(bridge: Bridge, event: Event) -> None:
    """A message in a room that is neither bridged nor an XMPP DM: a ``!xmpp`` command
    if it is the sender's DM with the bot."""
    body = event.content.get("body")
    if (event.type != "m.room.message" or not isinstance(body, str)
            or not body.startswith("!xmpp")
            or await bridge.store.get(f"botroom/{event.room_id}") != event.sender):
        return
    accounts, user = bridge.accounts, event.sender
    words = body.split()
    verb = words[1] if len(words) > 1 else "help"
    if verb == "link" and not accounts.enabled:
        reply = "Account linking is off on this gateway (no link_secret_key)."
    elif verb == "link" and not await _private(bridge, event.room_id, user):
        reply = ("The link to the form is only sent in a room with just you and me: "
                 "anyone who has it could link their account for you.")
    elif verb == "link":
        reply = (f"Open {await _new_link(bridge, user)} in a browser within "
                 f"{TOKEN_TTL // 60} minutes and give your JID and password there "
                 "(the link works once). Never type your password in a Matrix room.")
    elif verb == "unlink":
        had = await accounts.unlink(user)
        reply = ("Unlinked: your XMPP password is deleted from the gateway, which speaks "
                 "for you as before." if had else "You have no linked XMPP account.")
    elif verb == "status":
        jid = accounts.jid_of(user)
        reply = (f"Linked to {jid}: {accounts.status(user)}." if jid
                 else "You have no linked XMPP account.")
    else:
        reply = HELP
    await bridge.notice(event.room_id, reply)


async def _private(bridge: Bridge, room_id: str, user_id: str) -> bool:
    """Whether ``room_id``'s joined members are ``user_id`` and the bot, no one else."""
    joined = await bridge.hs.request(
        "GET", f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/joined_members")
    return set(joined.get("joined", {})) == {user_id, bridge.hs.user_id}


async def _new_link(bridge: Bridge, user_id: str) -> str:
    """A fresh one-time link for ``user_id`` to the form."""
    token_id, secret = secrets.token_urlsafe(9), secrets.token_urlsafe(24)
    await bridge.store.put(f"linktoken/{token_id}", {
        "user": user_id, "expires": time.time() + TOKEN_TTL, "hash": _hash(secret)})
    base = bridge.config.media_url.rstrip("/") or "/_servletkit/plugins/xmpp_gateway"
    return f"{base}/link/{token_id}.{secret}"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def _redeem(bridge: Bridge, token: str, consume: bool) -> str | None:
    """The Matrix user a valid ``token`` links for (deleted if ``consume``), else ``None``."""
    token_id, _, secret = token.partition(".")
    key = f"linktoken/{token_id}"
    record = await bridge.store.get(key) if token_id else None
    if record is None or not hmac.compare_digest(record["hash"], _hash(secret)):
        return None
    if consume or record["expires"] < time.time():
        await bridge.store.delete(key)
    return str(record["user"]) if record["expires"] >= time.time() else None


def _error(status: int, errcode: str, error: str) -> JSONResponse:
    return JSONResponse({"errcode": errcode, "error": error}, status)


async def _form(request: Request) -> dict[str, str] | JSONResponse:
    """The posted ``jid`` and ``password`` (JSON or a form), or the error answer."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return _error(413, "M_TOO_LARGE", f"the body is larger than {MAX_FORM} bytes")
    try:
        if request.headers.get("content-type", "").startswith("application/json"):
            fields: Any = json.loads(body)
        else:
            fields = {k: v[0] for k, v in parse_qs(body.decode(), strict_parsing=False).items()}
    except (ValueError, UnicodeDecodeError):
        return _error(400, "M_NOT_JSON", "the body is neither JSON nor a form")
    if not isinstance(fields, dict) or not all(isinstance(fields.get(k), str) and fields[k]
                                               for k in ("jid", "password")):
        return _error(400, "M_MISSING_PARAM", "give 'jid' and 'password'")
    return {"jid": fields["jid"].strip(), "password": fields["password"]}


def routes(bridge: Bridge) -> list[BaseRoute]:
    """``link/{token}``: the form (GET) and the linking itself (POST)."""

    async def form(request: Request) -> Response:
        user = await _redeem(bridge, request.path_params["token"], consume=False)
        if user is None:
            return _error(403, "M_FORBIDDEN", "this link is unknown, used or expired")
        return HTMLResponse(FORM.format(user=html.escape(user)), headers={
            "Content-Security-Policy": "default-src 'none'; form-action 'self'",
            "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})

    async def link(request: Request) -> Response:
        if not bridge.accounts.enabled:
            return _error(404, "M_NOT_FOUND", "account linking is off")
        fields = await _form(request)
        if isinstance(fields, Response):
            return fields
        try:
            jid = JID(fields["jid"])
        except InvalidJID:
            jid = JID()
        if not jid.user or not jid.domain:
            return _error(400, "M_INVALID_PARAM", "'jid' must be an XMPP address: user@domain")
        user = await _redeem(bridge, request.path_params["token"], consume=True)
        if user is None:
            return _error(403, "M_FORBIDDEN", "this link is unknown, used or expired")
        ok = await bridge.accounts.link(user, Credentials(jid.bare, fields["password"]))
        if ok:
            await bridge.accounts.tell(user, f"Linked: you speak as {jid.bare} in bridged "
                                       "rooms and DMs now. '!xmpp unlink' undoes it.")
            return JSONResponse({"linked": jid.bare})
        why = "refused the login" if ok is False else "did not answer in time"
        await bridge.accounts.tell(user, f"The XMPP server {why} of {jid.bare}; nothing "
                                   "was linked. Send '!xmpp link' to try again.")
        return _error(403 if ok is False else 504, "M_FORBIDDEN" if ok is False else "M_UNKNOWN",
                      f"the XMPP server {why}")

    return [Route("/link/{token}", form, methods=["GET"]),
            Route("/link/{token}", link, methods=["POST"])]
