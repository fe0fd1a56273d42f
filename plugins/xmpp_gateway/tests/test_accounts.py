"""Linked accounts' credentials: sealed at rest, kept out of reprs and logs."""

from __future__ import annotations

import base64
import logging

import pytest
from nacl.exceptions import CryptoError
from servletkit_xmpp_gateway import GatewayConfig, GatewayConfigError
from servletkit_xmpp_gateway.accounts import (
    NO_SASL,
    STREAM_LOGGER,
    Credentials,
    seal,
    secret_box,
    unseal,
)

KEY = "k" * 32
PASSWORD = "correct horse battery staple"


def test_a_sealed_password_opens_only_with_its_key() -> None:
    """The record holds the JID and a ciphertext (fresh nonce each time), not the password."""
    credentials = Credentials("dave@example.org", PASSWORD)
    record = seal(secret_box(KEY), credentials)
    assert record["jid"] == "dave@example.org"
    assert PASSWORD.encode() not in base64.b64decode(record["password"])
    assert record != seal(secret_box(KEY), credentials)
    assert unseal(secret_box(KEY), record) == credentials
    with pytest.raises(CryptoError):
        unseal(secret_box("x" * 32), record)


def test_the_password_is_not_in_a_repr() -> None:
    """A logged or printed Credentials (or config) shows no secret."""
    assert PASSWORD not in repr(Credentials("dave@example.org", PASSWORD))
    config = GatewayConfig.from_table({"component_jid": "m", "component_secret": "s",
                                       "muc_domain": "c", "link_secret_key": KEY})
    assert KEY not in repr(config)


def test_a_short_link_secret_key_is_refused() -> None:
    """link_secret_key must be long enough to be a key; empty turns linking off."""
    base = {"component_jid": "m", "component_secret": "s", "muc_domain": "c"}
    with pytest.raises(GatewayConfigError, match="link_secret_key: must be at least 32"):
        GatewayConfig.from_table({**base, "link_secret_key": "short"})
    assert GatewayConfig.from_table(base).link_secret_key == ""


def test_sasl_stanzas_never_reach_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """slixmpp logs every stanza at DEBUG; a PLAIN <auth/> (base64 of the password) is
    dropped, other stanzas are not."""
    log = logging.getLogger(STREAM_LOGGER)
    log.addFilter(NO_SASL)
    caplog.set_level(logging.DEBUG, STREAM_LOGGER)
    secret = base64.b64encode(f"\0dave\0{PASSWORD}".encode()).decode()
    try:
        log.debug("SEND: %s", '<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" '
                  f'mechanism="PLAIN">{secret}</auth>')
        log.debug("SEND: %s", "<presence />")
    finally:
        log.removeFilter(NO_SASL)
    assert secret not in caplog.text and "<presence />" in caplog.text
