"""The plugin object: idle without config, strict about the config it is given."""

from __future__ import annotations

import pytest
from servletkit_xmpp_gateway import GatewayConfig, GatewayConfigError, XmppGateway

from servletkit.testing import running_container


async def test_without_a_component_jid_it_stays_idle(caplog: pytest.LogCaptureFixture) -> None:
    """Installed but unconfigured (e.g. under `servletkit dev`): loads, says so, does nothing."""
    plugin = XmppGateway()
    async with running_container({"xmpp_gateway": plugin}):
        assert plugin.bridge is None
    assert "not configured" in caplog.text


def test_missing_keys_are_named_with_an_example() -> None:
    """A missing required key says which and what it looks like."""
    with pytest.raises(GatewayConfigError, match=r"component_secret: required, e\.g\."):
        GatewayConfig.from_table({"component_jid": "m.example", "muc_domain": "c.example"})


def test_wrong_types_say_what_was_expected_and_got() -> None:
    """xmpp_port as a string is refused with its value."""
    table = {"component_jid": "m", "component_secret": "s", "muc_domain": "c",
             "xmpp_port": "5347"}
    with pytest.raises(GatewayConfigError, match=r"xmpp_port: must be int, got '5347' \(str\)"):
        GatewayConfig.from_table(table)


def test_defaults_and_lists() -> None:
    """Prefixes default to _xmpp_; rooms is a tuple of JIDs; numbers widen to float."""
    config = GatewayConfig.from_table({"component_jid": "m", "component_secret": "s",
                                       "muc_domain": "c", "rooms": ["a@c"],
                                       "reconnect_max": 5})
    assert (config.alias_prefix, config.user_prefix) == ("_xmpp_", "_xmpp_")
    assert config.rooms == ("a@c",) and config.reconnect_max == 5.0


def test_booleans_are_booleans() -> None:
    """fetch_private_media takes true/false, not a number."""
    base = {"component_jid": "m", "component_secret": "s", "muc_domain": "c"}
    assert GatewayConfig.from_table({**base, "fetch_private_media": True}).fetch_private_media
    with pytest.raises(GatewayConfigError, match=r"fetch_private_media: must be bool"):
        GatewayConfig.from_table({**base, "fetch_private_media": 1})
