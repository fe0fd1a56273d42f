"""The gateway's settings: its ``[plugins.xmpp_gateway]`` table, checked once at init."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

TABLE = "[plugins.xmpp_gateway]"
MIN_KEY = 32  # characters of link_secret_key


class GatewayConfigError(ValueError):
    """A key of the plugin's table is missing or has the wrong type; names the key."""


@attrs.frozen
class GatewayConfig:
    """What the gateway needs to know about both networks.

    ``component_jid``/``component_secret``/``xmpp_host``/``xmpp_port``: the
    XEP-0114 external component the gateway connects as. ``muc_domain``: the
    MUC service whose rooms are bridged. ``alias_prefix``/``user_prefix``: the
    Matrix namespaces (``#{alias_prefix}{room}_{muc_domain}:server``,
    ``@{user_prefix}…:server``). ``bot_nick``: the gateway's own occupant in
    each bridged MUC. ``rooms``: MUC room JIDs bridged from the start.
    ``reconnect_min``/``reconnect_max``: the backoff bounds (seconds).
    ``media_url``: the public URL of the plugin's routes
    (``https://host/_servletkit/plugins/xmpp_gateway``), where XMPP users fetch
    Matrix files; empty: links to the homeserver's legacy media API instead.
    ``fetch_private_media``: let XMPP links to loopback and private addresses be
    fetched (off: an XMPP user could otherwise make the gateway read internal URLs).
    ``keep_days``: how long the records of earlier messages (``msg/``, ``edit/``,
    ``media/``, reaction sets) are kept, 0 for ever (:mod:`~servletkit_xmpp_gateway.retention`).
    ``history_backfill``: how many earlier messages each side gets of the other when a
    room and a MUC are first bridged, 0 none (:mod:`~servletkit_xmpp_gateway.history`).
    ``link_secret_key``: the key linked accounts' passwords are encrypted with in
    the store (at least 32 characters; empty: account linking is off).
    ``client_host``/``client_port``: where linked accounts' client sessions connect
    (empty host: the account's domain, by its SRV records). ``client_plaintext``:
    let those sessions log in without TLS (only for a server on loopback).
    """

    component_jid: str
    component_secret: str
    muc_domain: str
    xmpp_host: str = "127.0.0.1"
    xmpp_port: int = 5347
    alias_prefix: str = "_xmpp_"
    user_prefix: str = "_xmpp_"
    bot_nick: str = "Matrix"
    rooms: tuple[str, ...] = ()
    reconnect_min: float = 0.2
    reconnect_max: float = 30.0
    media_url: str = ""
    fetch_private_media: bool = False
    keep_days: int = 30
    history_backfill: int = 50
    link_secret_key: str = attrs.field(default="", repr=False)
    client_host: str = ""
    client_port: int = 5222
    client_plaintext: bool = False

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> GatewayConfig:
        """Parse the plugin's table; raise :class:`GatewayConfigError` naming the bad key."""
        values: dict[str, Any] = {}
        for field in attrs.fields(cls):
            if field.name not in table:
                if field.default is attrs.NOTHING:
                    raise GatewayConfigError(
                        f"{TABLE} {field.name}: required, e.g. {_EXAMPLES[field.name]}")
                continue
            values[field.name] = _checked(field.name, table[field.name], field.default)
        for key in _COUNTS:
            if values.get(key, 0) < 0:
                raise GatewayConfigError(f"{TABLE} {key}: must be 0 or more, got {values[key]}")
        if 0 < len(values.get("link_secret_key", "")) < MIN_KEY:
            raise GatewayConfigError(f"{TABLE} link_secret_key: must be at least {MIN_KEY} "
                                     "characters (e.g. the output of `openssl rand -hex 32`)")
        return cls(**values)


_COUNTS = ("keep_days", "history_backfill")


_EXAMPLES = {
    "component_jid": 'component_jid = "matrix.example.org"',
    "component_secret": 'component_secret = "the secret in the XMPP server\'s Component block"',
    "muc_domain": 'muc_domain = "conference.example.org"',
}


def _checked(key: str, value: Any, default: Any) -> Any:
    """``value`` converted to the type of ``default`` (str, int, float or a str list)."""
    expected: type = str if default is attrs.NOTHING else type(default)
    if expected is tuple:
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise GatewayConfigError(f"{TABLE} {key}: must be a list of strings, got {value!r}")
        return tuple(value)
    if expected is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
        raise GatewayConfigError(f"{TABLE} {key}: must be {expected.__name__}, "
                                 f"got {value!r} ({type(value).__name__})")
    return value
