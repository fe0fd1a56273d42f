"""How names cross the gateway: aliases ↔ MUC rooms, users ↔ JIDs, display names ↔ nicks.

Pure functions, no I/O. Every mapping is deterministic and reversible where the
gateway needs to go back (a Matrix puppet's JID back to the Matrix user; a
virtual user back to the XMPP address it stands for).
"""

from __future__ import annotations

import re
import unicodedata

# Matrix user-ID localparts may hold a-z 0-9 . _ = - / +; we emit a safe subset
_LOCALPART_SAFE = re.compile(r"[a-z0-9._\-]")
# characters a JID node may not hold (RFC 7622 / XEP-0106), escaped the XEP-0106 way
_JID_ESCAPES = {" ": r"\20", '"': r"\22", "&": r"\26", "'": r"\27", "/": r"\2f",
                ":": r"\3a", "<": r"\3c", ">": r"\3e", "@": r"\40", "\\": r"\5c"}
_JID_UNESCAPES = {v: k for k, v in _JID_ESCAPES.items()}
NICK_MAX = 32


def alias_localpart(prefix: str, room: str, muc_domain: str) -> str:
    """The Matrix alias localpart of MUC ``room@muc_domain``: ``{prefix}{room}_{muc_domain}``."""
    return f"{prefix}{room}_{muc_domain}"


def room_of_alias(alias: str, prefix: str, muc_domain: str) -> str | None:
    """The MUC room JID an alias stands for, or ``None`` if it is not one of ours.

    ``#_xmpp_lobby_conference.localhost:localhost`` → ``lobby@conference.localhost``.
    """
    localpart = alias.removeprefix("#").split(":", 1)[0]
    suffix = f"_{muc_domain}"
    if not (localpart.startswith(prefix) and localpart.endswith(suffix)):
        return None
    room = localpart[len(prefix):-len(suffix)]
    if not room or any(c in room for c in "@/ :"):
        return None
    return f"{room.lower()}@{muc_domain}"


def virtual_localpart(prefix: str, xmpp_address: str) -> str:
    """The localpart of the Matrix virtual user standing for an XMPP address.

    Lower-case letters, digits, ``.``, ``_`` and ``-`` stay; every other
    character (``@``, ``/``, upper case, non-ASCII) becomes ``=XX`` per UTF-8
    byte, so ``human@localhost`` → ``{prefix}human=40localhost``.
    """
    out = []
    for char in xmpp_address:
        if _LOCALPART_SAFE.fullmatch(char):
            out.append(char)
        else:
            out.extend(f"={byte:02x}" for byte in char.encode())
    return prefix + "".join(out)


def xmpp_address_of(prefix: str, localpart: str) -> str | None:
    """The XMPP address a virtual user's localpart stands for (inverse of
    :func:`virtual_localpart`), or ``None`` if it is not one."""
    if not localpart.startswith(prefix):
        return None
    encoded = localpart[len(prefix):]
    raw = bytearray()
    i = 0
    while i < len(encoded):
        if encoded[i] == "=":
            try:
                raw.append(int(encoded[i + 1:i + 3], 16))
            except ValueError:
                return None
            i += 3
        else:
            raw.extend(encoded[i].encode())
            i += 1
    try:
        return raw.decode() or None
    except UnicodeDecodeError:
        return None


def puppet_jid(user_id: str, server_name: str, component_jid: str) -> str:
    """The bare JID of a Matrix user's puppet on the component domain.

    ``@alice:localhost`` → ``alice@matrix.localhost`` for users of the gateway's
    own homeserver; ``@bob:other.org`` → ``bob%other.org@matrix.localhost``
    (``%`` never occurs in a Matrix localpart, so the form is reversible).
    """
    localpart, _, server = user_id.removeprefix("@").partition(":")
    node = localpart if server == server_name else f"{localpart}%{server}"
    return f"{_escape_node(node)}@{component_jid}"


def user_of_puppet(jid: str, server_name: str, component_jid: str) -> str | None:
    """The Matrix user ID a puppet JID stands for (inverse of :func:`puppet_jid`)."""
    node, _, domain = jid.split("/", 1)[0].partition("@")
    if domain != component_jid or not node:
        return None
    node = _unescape_node(node)
    localpart, _, server = node.partition("%")
    return f"@{localpart}:{server or server_name}"


def sanitise_nick(displayname: str | None, fallback: str) -> str:
    """A readable MUC nick from a display name: control and format characters gone,
    white space collapsed, at most :data:`NICK_MAX` characters; ``fallback``
    (the user's localpart) when nothing is left."""
    text = "".join(c for c in (displayname or "")
                   if unicodedata.category(c)[0] != "C")
    text = " ".join(text.split())[:NICK_MAX].strip()
    return text or fallback[:NICK_MAX]


def free_nick(wanted: str, taken: set[str]) -> str:
    """``wanted`` if no occupant has it, else ``wanted (2)``, ``wanted (3)`` … (bounded)."""
    if wanted not in taken:
        return wanted
    for n in range(2, 1000):
        candidate = f"{wanted[:NICK_MAX - 6]} ({n})"
        if candidate not in taken:
            return candidate
    raise ValueError(f"no free nick for {wanted!r} among {len(taken)} occupants")


def _escape_node(node: str) -> str:
    return "".join(_JID_ESCAPES.get(c, c) for c in node)


def _unescape_node(node: str) -> str:
    return re.sub(r"\\[0-9a-f]{2}", lambda m: _JID_UNESCAPES.get(m.group(0), m.group(0)), node)
