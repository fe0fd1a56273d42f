"""``context.homeserver``: built from ``[homeserver]`` and ``[appservice]``, shared, closed."""

from __future__ import annotations

import pytest

from servletkit.container.config import parse_config
from servletkit.container.config_tables import ConfigError
from servletkit.container.runtime import Container
from servletkit.wires.appservice.homeserver import HomeserverClient

APPSERVICE = {"id": "bridge", "as_token": "as-tok-xyz", "hs_token": "hs-tok-xyz",
              "sender_localpart": "bridgebot"}


def test_appservice_section_parsed_without_tokens_in_repr():
    """[appservice] is read with its four keys; the tokens do not show in the repr."""
    config = parse_config({"appservice": APPSERVICE})
    assert config.appservice is not None
    assert (config.appservice.id, config.appservice.as_token, config.appservice.hs_token,
            config.appservice.sender_localpart) == ("bridge", "as-tok-xyz", "hs-tok-xyz",
                                                    "bridgebot")
    assert "tok-xyz" not in repr(config)


def test_appservice_section_is_optional():
    """Without [appservice] the section is None."""
    assert parse_config({}).appservice is None


def test_appservice_section_checks_keys():
    """A missing key or a wrong type fails naming the key."""
    with pytest.raises(ConfigError, match=r"appservice\.hs_token: is required but missing"):
        parse_config({"appservice": {k: v for k, v in APPSERVICE.items() if k != "hs_token"}})
    with pytest.raises(ConfigError, match=r"appservice\.as_token: must be a string"):
        parse_config({"appservice": {**APPSERVICE, "as_token": 5}})


async def test_context_gets_the_shared_client():
    """Every plugin's context carries the same client, acting as the appservice's bot."""
    config = parse_config({"homeserver": {"url": "http://127.0.0.1:9", "server_name": "ex.org"},
                           "appservice": APPSERVICE})
    container = Container(config)
    first, second = container.make_context("a", {}), container.make_context("b", {})
    assert isinstance(first.homeserver, HomeserverClient)
    assert first.homeserver is second.homeserver
    assert first.homeserver.user_id == "@bridgebot:ex.org"
    assert first.homeserver.base_url == "http://127.0.0.1:9"
    await container.stop()
    assert first.homeserver._http.is_closed


def test_no_client_without_appservice():
    """Without [appservice] there is no token to act with: context.homeserver is None."""
    assert Container(parse_config({})).make_context("a", {}).homeserver is None
