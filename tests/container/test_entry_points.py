"""A plugin author's path: a real distribution with an entry point, installed, discovered, run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from servletkit.testing import only_plugins, plugin_site, plugins_toml, python_path_env

PLUGIN_MODULE = '''
from servletkit import Modify, Veto, hookimpl


class Shouter:
    @hookimpl
    def servlet_init(self, context):
        if "banned" not in context.config:
            raise ValueError("shouty needs a 'banned' word in [plugins.shouty]")

    @hookimpl
    def on_send_event(self, event, context):
        body = event.content.get("body", "")
        if context.config["banned"] in body:
            return Veto("banned word", errcode="M_FORBIDDEN")
        return Modify(content={**event.content, "body": body.upper()})
'''

DRIVE = '''
import asyncio, json, sys
from servletkit import Event
from servletkit.container.config import load_config
from servletkit.container.runtime import Container

async def main():
    container = Container(load_config(sys.argv[1]))
    container.load()
    await container.start()
    results = []
    for body in ["hello", "a darn shame"]:
        event = Event.from_json({"event_id": "$1", "room_id": "!r:hs", "type": "m.room.message",
                                 "sender": "@a:hs", "content": {"body": body}})
        outcome = await container.dispatcher.intercept("on_send_event", event)
        results.append([type(outcome.decision).__name__, outcome.decided_by,
                        outcome.event.content["body"] if outcome.event else None])
    await container.stop()
    print(json.dumps(results))

asyncio.run(main())
'''


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Build and install ``shouty-plugin`` into a throwaway target folder; give its env."""
    root = tmp_path_factory.mktemp("shouty")
    source = root / "src"
    (source / "shouty").mkdir(parents=True)
    (source / "shouty" / "__init__.py").write_text(PLUGIN_MODULE)
    (source / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "shouty-plugin"
        version = "1.2.3"

        [project.entry-points."servletkit.plugins"]
        shouty = "shouty:Shouter"
    """))
    target = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(target), str(source)],
        check=True, capture_output=True,
    )
    config = root / "servletkit.toml"
    config.write_text(plugins_toml(only_plugins({"shouty": {"banned": "darn"}})))
    return {"config": str(config), **python_path_env(target)}


def servletkit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "servletkit.container.cli", *args],
        env=env, capture_output=True, text=True, timeout=60,
    )


def test_plugins_lists_the_installed_distribution(installed_plugin: dict[str, str]) -> None:
    result = servletkit(installed_plugin, "plugins", "--config", installed_plugin["config"])
    assert result.returncode == 0, result.stderr
    [row] = [line for line in result.stdout.splitlines() if line.startswith("shouty")]
    assert row.split() == [
        "shouty", "shouty-plugin", "1.2.3", "on_send_event,", "servlet_init", "yes", "0", "loaded"
    ]


def test_check_passes(installed_plugin: dict[str, str]) -> None:
    result = servletkit(installed_plugin, "check", "--config", installed_plugin["config"])
    assert result.returncode == 0, result.stderr
    assert "shouty" in result.stdout


def test_the_dispatcher_applies_its_decisions(installed_plugin: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", DRIVE, installed_plugin["config"]],
        env=installed_plugin, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        ["Modify", "shouty", "HELLO"],
        ["Veto", "shouty", None],
    ]


def test_check_fails_on_a_typo_in_the_plugin_table(
    installed_plugin: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "servletkit.toml"
    config.write_text("[plugins.shoty]\n")
    result = servletkit(installed_plugin, "check", "--config", str(config))
    assert result.returncode == 1
    assert f"{config}: plugins.shoty: no installed plugin is called 'shoty'" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_warns_of_a_misspelt_container_key(
    installed_plugin: dict[str, str], tmp_path: Path
) -> None:
    """`timeout` for `timeout_ms`: a warning on stderr naming both; the plugin still runs."""
    config = tmp_path / "servletkit.toml"
    config.write_text('[plugins.shouty]\nbanned = "darn"\ntimeout = 50\n')
    result = servletkit(installed_plugin, "check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert f"{config}: plugins.shouty.timeout: did you mean 'timeout_ms'?" in result.stderr


def test_check_fails_when_a_plugin_cannot_init(
    installed_plugin: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "servletkit.toml"
    config.write_text("[plugins.shouty]\n")  # no 'banned' word: its servlet_init refuses
    result = servletkit(installed_plugin, "check", "--config", str(config))
    assert result.returncode == 1
    assert "plugin 'shouty' failed to init: ValueError: shouty needs a 'banned' word" in (
        result.stderr
    )
    assert result.stderr.count("Traceback (most recent call last)") == 1


def test_check_shows_an_import_failure_once(tmp_path: Path) -> None:
    """A plugin that raises at import: exit 1, its traceback once, then the one-line summary."""
    site = plugin_site(tmp_path, "broken", 'raise RuntimeError("broken at import")\n')
    config = tmp_path / "servletkit.toml"
    config.write_text(plugins_toml(only_plugins({})))
    result = servletkit(python_path_env(site), "check", "--config", str(config))
    assert result.returncode == 1
    assert result.stderr.count("Traceback (most recent call last)") == 1
    assert result.stderr.count('raise RuntimeError("broken at import")') == 1
    assert result.stderr.rstrip().endswith(
        "plugin 'broken' failed to import: RuntimeError: broken at import")


def test_a_missing_config_file_is_one_clear_line(
    installed_plugin: dict[str, str], tmp_path: Path
) -> None:
    result = servletkit(installed_plugin, "check", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert "no such config file" in result.stderr
    assert "Traceback" not in result.stderr


def test_plugins_never_starts_them(installed_plugin: dict[str, str], tmp_path: Path) -> None:
    """Listing imports the plugin but runs no servlet_init (which would refuse here)."""
    config = tmp_path / "servletkit.toml"
    config.write_text("[plugins.shouty]\n")  # no 'banned' word: its servlet_init would raise
    result = servletkit(installed_plugin, "plugins", "--config", str(config))
    assert result.returncode == 0, result.stderr
    [row] = [line for line in result.stdout.splitlines() if line.startswith("shouty")]
    assert row.split()[-1] == "loaded"
    assert "needs a 'banned' word" not in result.stdout + result.stderr
