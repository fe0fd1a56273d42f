"""servletkit.toml validation: every mistake names the file, the key and the problem."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from servletkit.container.config import load_config
from servletkit.container.config_tables import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "servletkit.toml"
    path.write_text(text)
    return path


def test_the_example_config_is_valid() -> None:
    config = load_config(REPO / "servletkit.toml")
    assert config.server.port == 8090
    table = config.plugin("word_filter")
    assert table is not None
    assert table.settings.on_error == "allow" and table.settings.timeout_ms == 200
    assert "forbidden" in table.options["words"]
    assert "order" not in table.options  # container keys are not the plugin's


def test_defaults_apply_to_missing_sections(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.server.host == "127.0.0.1"
    assert config.plugins == ()


def test_plugin_tables_keep_file_order(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[plugins.zeta]\n[plugins.alpha]\norder = 5\n"))
    assert [(t.name, t.position, t.settings.order) for t in config.plugins] == [
        ("zeta", 0, 0), ("alpha", 1, 5)
    ]


def test_plugin_options_are_read_only(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[plugins.p]\nwords = ['a']\n"))
    with pytest.raises(TypeError):
        config.plugins[0].options["words"] = []  # type: ignore[index]


@pytest.mark.parametrize(
    ("typo", "meant"),
    [("timeout", "timeout_ms"), ("order_", "order"), ("enable", "enabled"),
     ("onerror", "on_error")],
)
def test_a_plugin_key_one_edit_from_a_container_key_is_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, typo: str, meant: str
) -> None:
    """The warning names the file, both keys and the container's; the key stays the plugin's."""
    path = write(tmp_path, f"[plugins.quiet_room]\n{typo} = 5\n")
    with caplog.at_level(logging.WARNING, logger="servletkit.config"):
        config = load_config(path)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith(
        f"{path}: plugins.quiet_room.{typo}: did you mean {meant!r}? ")
    assert "the container's keys are enabled, order, timeout_ms, on_error" in record.getMessage()
    assert config.plugins[0].options == {typo: 5}


def test_plugin_keys_far_from_container_keys_are_not_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A plugin's own keys and exact container keys: no warning."""
    path = write(tmp_path, "[plugins.quiet_room]\nmax_shout = 3\nwords = ['a']\n"
                           "retry_timeout_ms = 5\ntimeout_ms = 200\norder = 5\n")
    with caplog.at_level(logging.DEBUG, logger="servletkit.config"):
        load_config(path)
    assert caplog.records == []


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[server]\nport = '8090'\n", "server.port", "must be an integer, got '8090' (str)"),
        ("[server]\nport = true\n", "server.port", "must be an integer, got true (a boolean)"),
        ("[server]\nprot = 1\n", "server.prot", "unknown key (known keys: host, port, "),
        ("[sever]\nport = 1\n", "sever", "unknown section"),
        ("server = 3\n", "server", "must be a table"),
        ("[plugins.p]\non_error = 'maybe'\n", "plugins.p.on_error", "must be 'allow' or 'deny'"),
        ("[plugins.p]\ntimeout_ms = 'fast'\n", "plugins.p.timeout_ms", "must be a number"),
        ("[plugins.p]\ntimeout_ms = 0\n", "plugins.p.timeout_ms", "must be positive, got 0"),
        ("[server]\nport = 70000\n", "server.port", "must be a TCP port (1-65535), got 70000"),
        ("[module]\nport = 0\n", "module.port", "must be a TCP port (1-65535), got 0"),
        ("[store]\naudit_kept = -1\n", "store.audit_kept", "must be positive, got -1"),
        ("[plugins.p]\nenabled = 'yes'\n", "plugins.p.enabled", "must be true or false"),
        ("plugins = 1\n", "plugins", "must be a table"),
        ("[plugins]\np = 1\n", "plugins.p", "must be a table"),
    ],
)
def test_mistakes_name_file_key_and_problem(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key
    assert problem in info.value.problem
    assert str(info.value).startswith(f"{path}: {key}: ")


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server\nport = 1\n")
    with pytest.raises(ConfigError, match="is not valid TOML") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml")
