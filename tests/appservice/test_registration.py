"""``servletkit registration`` and ``servletkit synapse-config``."""

from __future__ import annotations

import pytest
import yaml

from servletkit.container.cli import main
from servletkit.container.config import parse_config
from servletkit.container.config_tables import ConfigError
from servletkit.container.snippets import (
    SYNAPSE_SNIPPETS,
    appservice_url,
    registration,
    synapse_config,
)

CONFIG = """
[server]
host = "0.0.0.0"
port = 8123

[appservice]
id = "bridge"
as_token = "the-as-token"
hs_token = "the-hs-token"
sender_localpart = "bridgebot"
receive_ephemeral = true
protocols = ["xmpp"]

[[appservice.namespaces.users]]
regex = "@_xmpp_.*:localhost"
exclusive = true

[[appservice.namespaces.aliases]]
regex = "#_xmpp_.*:localhost"
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "servletkit.toml"
    path.write_text(CONFIG)
    return path


def test_registration_cli_prints_the_registration(config_file, capsys):
    """The printed YAML is the registration Synapse loads: ids, url, tokens, namespaces."""
    assert main(["registration", "--config", str(config_file)]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == {
        "id": "bridge",
        "url": "http://127.0.0.1:8123",
        "as_token": "the-as-token",
        "hs_token": "the-hs-token",
        "sender_localpart": "bridgebot",
        "rate_limited": False,
        "receive_ephemeral": True,
        "namespaces": {
            "users": [{"regex": "@_xmpp_.*:localhost", "exclusive": True}],
            "aliases": [{"regex": "#_xmpp_.*:localhost", "exclusive": False}],
            "rooms": [],
        },
        "protocols": ["xmpp"],
    }


def test_synapse_config_cli_prints_the_snippet(config_file, capsys):
    """The snippet names the registration file (relative to the config) and the to-device flag."""
    assert main(["synapse-config", "--config", str(config_file),
                 "--registration", "reg.yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == {
        "app_service_config_files": [str(config_file.parent / "reg.yaml")],
        "experimental_features": {"msc2409_to_device_messages_enabled": True},
    }


def test_without_appservice_section_the_cli_says_what_to_add(tmp_path, capsys):
    """No [appservice] section: exit 1 and a message naming the section and its keys."""
    path = tmp_path / "servletkit.toml"
    path.write_text("")
    assert main(["registration", "--config", str(path)]) == 1
    assert "add an [appservice] section with as_token and hs_token" in capsys.readouterr().err


def test_url_explicit_or_derived(tmp_path):
    """An explicit url wins (without a trailing slash); else [server] host and port."""
    base = {"as_token": "a", "hs_token": "h"}
    explicit = parse_config({"appservice": {**base, "url": "http://as.internal:9/"}}, tmp_path)
    assert appservice_url(explicit) == "http://as.internal:9"
    derived = parse_config({"appservice": base, "server": {"host": "::1", "port": 7}}, tmp_path)
    assert registration(derived)["url"] == "http://[::1]:7"


def test_other_wires_extend_the_synapse_snippet(tmp_path, monkeypatch):
    """A wire appends a snippet function; lists and tables from several snippets are merged."""
    config = parse_config({"appservice": {"as_token": "a", "hs_token": "h"}}, tmp_path)
    monkeypatch.setattr("servletkit.container.snippets.SYNAPSE_SNIPPETS", [
        *SYNAPSE_SNIPPETS, lambda config, reg: {"modules": [{"module": "m.M", "config": {}}]},
    ])
    assert synapse_config(config, tmp_path / "r.yaml") == {
        "app_service_config_files": [str(tmp_path / "r.yaml")],
        "modules": [{"module": "m.M", "config": {}}],
    }


def test_config_errors_name_the_key(tmp_path):
    """Bad [appservice] keys fail naming the key and the problem."""
    with pytest.raises(ConfigError, match=r"appservice\.enforce_vetoes: must be 'observe' or"):
        parse_config({"appservice": {"as_token": "a", "hs_token": "h",
                                     "enforce_vetoes": "delete"}}, tmp_path)
    with pytest.raises(ConfigError, match=r"namespaces\.users\[0\]: regex: '\(' is not a valid"):
        parse_config({"appservice": {"as_token": "a", "hs_token": "h",
                                     "namespaces": {"users": [{"regex": "("}]}}}, tmp_path)
    with pytest.raises(ConfigError, match=r"appservice: as_token must not be empty"):
        parse_config({"appservice": {"as_token": "", "hs_token": "h"}}, tmp_path)
