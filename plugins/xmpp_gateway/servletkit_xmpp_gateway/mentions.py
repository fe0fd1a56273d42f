"""Mentions in a group chat: Matrix pills and ``m.mentions`` ↔ nicks in the XMPP body.

XMPP has no mention markup that every client reads: clients highlight a message
whose body names the reader's nick. So, Matrix → XMPP: each person a Matrix message
mentions (a pill, ``<a href="https://matrix.to/#/@user">``, or ``m.mentions.user_ids``)
who is in the MUC, an XMPP user's virtual user or a Matrix user's puppet, is named in
the body by their nick there: the pill's text is replaced by the nick, and a mention
the body does not name puts ``nick: `` in front. Each gets a XEP-0372 reference
(``type="mention"``, ``uri="xmpp:room@muc/nick"``, ``begin``/``end`` in the body).

XMPP → Matrix: a message that names the nick of a Matrix user's puppet as a word
(``Mo: hi``, ``thanks Mo!``) mentions that user: ``m.mentions.user_ids`` and a pill in
``formatted_body`` (made from the body when the message had no formatting).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html import escape, unescape
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from servletkit_xmpp_gateway import names

if TYPE_CHECKING:
    from servletkit_xmpp_gateway.core import BridgeCore

REFERENCE_NS = "urn:xmpp:reference:0"
PERMALINK = "https://matrix.to/#/"
HTML = "org.matrix.custom.html"
_PILL = re.compile(r'<a\s+href="https://matrix\.to/#/([^"?]+)[^"]*"\s*>(.*?)</a>', re.S | re.I)
_TAG = re.compile(r"(<[^>]*>)")
_LINK_OPEN = re.compile(r"<a[\s>]", re.I)


def nicks_of(bridge: BridgeCore, muc: str) -> dict[str, str]:
    """Who is in ``muc``, by Matrix user ID → nick: the occupants' virtual users and
    the Matrix users' puppets."""
    found = {f"@{names.virtual_localpart(bridge.config.user_prefix, address)}"
             f":{bridge.server_name}": nick
             for nick, address in bridge.occupants.get(muc, {}).items()}
    found.update({user_id: nick for (room, user_id), nick in bridge.puppets.items()
                  if room == muc})
    return found


def out(content: dict[str, Any], nicks: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """``content`` with the people it mentions named by their ``nicks`` (user ID →
    nick), and the nicks it mentions, in order."""
    if not isinstance(content.get("body"), str):
        return content, []
    body: str = content["body"]
    html = content.get("formatted_body") if content.get("format") == HTML else None
    mentioned: list[str] = []
    if isinstance(html, str):
        def pill(match: re.Match[str]) -> str:
            nonlocal body
            nick = nicks.get(unquote(match.group(1)))
            if nick is None:
                return match.group(0)
            text = unescape(_TAG.sub("", match.group(2)))
            if text and text != nick and text in body:
                body = body.replace(text, nick, 1)
            mentioned.append(nick)
            return escape(nick, quote=False)
        html = _PILL.sub(pill, html)
    listed = (content.get("m.mentions") or {}).get("user_ids") or []
    for user_id in listed if isinstance(listed, list) else []:
        nick = nicks.get(user_id) if isinstance(user_id, str) else None
        if nick is not None and nick not in mentioned:
            mentioned.append(nick)
            if _word(nick).search(body) is None:
                body = f"{nick}: {body}"
                html = None if html is None else f"{escape(nick, quote=False)}: {html}"
    if not mentioned:
        return content, []
    changed = {**content, "body": body}
    if html is not None:
        changed["formatted_body"] = html
    return changed, mentioned


def mark(msg: Any, muc: str, mentioned: list[str]) -> None:
    """Add a XEP-0372 mention reference to ``msg`` for each nick its body names."""
    body: str = msg["body"]
    for nick in dict.fromkeys(mentioned):
        found = _word(nick).search(body)
        if found is not None:
            ET.SubElement(msg.xml, f"{{{REFERENCE_NS}}}reference", type="mention",
                          uri=f"xmpp:{muc}/{nick}", begin=str(found.start()),
                          end=str(found.end()))


def content_in(content: dict[str, Any], users: dict[str, str]) -> dict[str, Any]:
    """``content`` of an XMPP message with the Matrix users whose nicks it names
    (``users``: nick → user ID) mentioned: ``m.mentions`` and pills."""
    body = content.get("body", "")
    named = [nick for nick in sorted(users, key=len, reverse=True)
             if _word(nick).search(body) is not None]
    if not named:
        return content
    html = content.get("formatted_body") if content.get("format") == HTML else None
    if html is None:
        html = escape(body, quote=False).replace("\n", "<br/>")
    by_text = {escape(nick, quote=False): users[nick] for nick in named}
    either = re.compile("|".join(_word(text).pattern for text in by_text))

    def pill(match: re.Match[str]) -> str:
        return f'<a href="{PERMALINK}{by_text[match.group(0)]}">{match.group(0)}</a>'

    # in text only: never inside a tag, nor in the text of a link that is there already
    parts, in_link = [], False
    for part in _TAG.split(html):
        if _LINK_OPEN.match(part):
            in_link = True
        elif part.lower().startswith("</a"):
            in_link = False
        parts.append(part if part.startswith("<") or in_link else either.sub(pill, part))
    return {**content, "format": HTML, "formatted_body": "".join(parts),
            "m.mentions": {"user_ids": sorted({users[nick] for nick in named})}}


def _word(text: str) -> re.Pattern[str]:
    """``text`` as a whole word (not part of a longer one)."""
    return re.compile(rf"(?<!\w){re.escape(text)}(?!\w)")
