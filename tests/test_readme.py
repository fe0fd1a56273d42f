"""The README's quickstart is real: its plugin, pyproject and config work as printed."""

from __future__ import annotations

import re
import tomllib
import types
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from servletkit import Modify, Veto
from servletkit.container.plugins import ENTRY_POINT_GROUP
from servletkit.container.runtime import Container
from servletkit.testing import make_event, running_container

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def block(language: str, marker: str) -> str:
    """The fenced ``language`` block of the README that contains ``marker``."""
    for text in re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL):
        if marker in text:
            return text
    raise AssertionError(f"README has no {language} block containing {marker!r}")


def test_the_readme_starts_with_the_two_setup_commands() -> None:
    first = re.search(r"```bash\n(.*?)```", README, flags=re.DOTALL)
    assert first is not None
    commands = first.group(1).strip().splitlines()
    assert len(commands) == 2
    assert "servletkit" in commands[0] and "pytest" in commands[1]
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert commands[1] in ci  # CI runs exactly the README's test command


def test_the_pyproject_declares_the_entry_point() -> None:
    pyproject = tomllib.loads(block("toml", "[project]"))
    assert pyproject["project"]["entry-points"][ENTRY_POINT_GROUP] == {"quiet_room": "quiet_room"}


@pytest.fixture
async def container() -> AsyncIterator[Container]:
    module = types.ModuleType("quiet_room")
    exec(compile(block("python", "quiet_room"), "README.md", "exec"), module.__dict__)
    config = tomllib.loads(block("toml", "[plugins.quiet_room]"))
    async with running_container({"quiet_room": module}, config) as c:
        yield c


async def test_the_quickstart_plugin_vetoes_shouting(container: Container) -> None:
    outcome = await container.dispatcher.intercept("on_send_event", make_event("STOP THAT"))
    assert outcome.decision == Veto("Please don't shout in here")
    assert outcome.decided_by == "quiet_room"


async def test_the_quickstart_plugin_modifies_whispers(container: Container) -> None:
    outcome = await container.dispatcher.intercept("on_send_event", make_event("psst HELLO"))
    assert outcome.decision == Modify(content={"msgtype": "m.text", "body": "hello"})


async def test_the_quickstart_plugin_reads_its_config(container: Container) -> None:
    assert container.settings("quiet_room").on_error == "deny"
    outcome = await container.dispatcher.intercept("on_send_event", make_event("OK"))
    assert outcome.decision is None  # two letters: not over max_shout
