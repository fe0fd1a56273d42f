"""The admin API (issue 13): loopback callers with the admin token only; reload and live
state; the ``servletkit reload`` and ``servletkit plugins`` commands against a running
container."""

from __future__ import annotations

import logging
import stat
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from servletkit.container.admin import PREFIX, admin_routes, admin_token
from servletkit.container.config import parse_config
from servletkit.container.runtime import Container
from servletkit.dev.embedded_synapse import free_port, stop_process
from servletkit.testing import only_plugins, plugins_toml, python_path_env, running_container
from servletkit.testing.container import start_container
from tests.container.reload_support import PluginOnDisk, importable_plugin, servletkit_cli
from tests.container.test_reload import SHOUT, VETO_X

TOKEN = "admin-token-for-tests-0123456789"


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PluginOnDisk]:
    on_disk = importable_plugin(tmp_path, monkeypatch, "adminy")
    on_disk.write("1.0", VETO_X)
    yield on_disk
    on_disk.forget()


@pytest.fixture
async def container(plugin: PluginOnDisk) -> AsyncIterator[Container]:
    config = {"admin": {"token": TOKEN}, "plugins": only_plugins({plugin.name: {}})}
    async with running_container({}, config, include_installed=True) as c:
        yield c


def client(container: Container, host: str = "127.0.0.1",
           token: str | None = TOKEN) -> httpx.AsyncClient:
    app = Starlette(routes=admin_routes(container))
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(host, 40000)),
        base_url="http://container" + PREFIX,
        headers={"Authorization": f"Bearer {token}"} if token else {})


async def test_reload_and_live_state_over_the_api(
    container: Container, plugin: PluginOnDisk, caplog: pytest.LogCaptureFixture
) -> None:
    """POST reload swaps the plugin; GET plugins shows the new version; no token is logged."""
    plugin.write("1.1", SHOUT)
    with caplog.at_level(logging.DEBUG):
        async with client(container) as http:
            answer = (await http.post(f"/plugins/{plugin.name}/reload")).json()
            assert answer["ok"] and (answer["old"], answer["new"]) == ("1.0#1", "1.1#2")
            assert answer["summary"].startswith("adminy: reloaded 1.0#1 -> 1.1#2 in ")
            rows = (await http.get("/plugins")).json()["plugins"]
            failed = (await http.post("/plugins/nonesuch/reload")).json()
    [row] = [row for row in rows if row["name"] == plugin.name]
    assert (row["loaded_version"], row["live"], row["calls"]) == ("1.1#2", True, 0)
    assert row["since"] <= time.time()
    assert not failed["ok"] and failed["error"]["stage"] == "import"
    assert TOKEN not in caplog.text


@pytest.mark.parametrize(("host", "token", "status", "errcode"), [
    ("192.0.2.7", TOKEN, 403, "M_FORBIDDEN"),
    ("127.0.0.1", None, 401, "M_MISSING_TOKEN"),
    ("127.0.0.1", TOKEN + "x", 401, "M_UNKNOWN_TOKEN"),
    ("::1", "wrong", 401, "M_UNKNOWN_TOKEN"),
])
async def test_refused_without_loopback_or_the_token(
    container: Container, plugin: PluginOnDisk, host: str, token: str | None, status: int,
    errcode: str,
) -> None:
    """Off loopback, or without the right token, nothing is reloaded or listed."""
    async with client(container, host, token) as http:
        for response in [await http.post(f"/plugins/{plugin.name}/reload"),
                         await http.get("/plugins")]:
            assert response.status_code == status
            assert response.json()["errcode"] == errcode
    assert container.version(plugin.name).number == 1  # type: ignore[union-attr]


def test_the_token_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    """Without [admin] token, one is made on the first start (0600) and then kept."""
    config = parse_config({}, tmp_path / "servletkit.toml")
    assert admin_token(config, create=False) is None
    first = admin_token(config, create=True)
    assert first and len(first) >= 32
    path = tmp_path / ".servletkit" / "admin-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert admin_token(config, create=True) == first == admin_token(config, create=False)
    assert admin_routes(Container(parse_config({"admin": {"enabled": False}},
                                               tmp_path / "servletkit.toml"))) == []


@pytest.mark.integration
def test_the_commands_reach_a_running_container(tmp_path: Path) -> None:
    """``servletkit reload`` swaps the plugin in a ``servletkit run``; ``servletkit plugins``
    shows its live state; both fail in one line when no container runs."""
    site = tmp_path / "site"
    plugin = PluginOnDisk(site, "cliy")
    plugin.write("2.0", VETO_X)
    config = tmp_path / "servletkit.toml"
    port = free_port()
    config.write_text(f"[server]\nport = {port}\n"
                      + plugins_toml(only_plugins({"cliy": {}})))
    env = python_path_env(site)
    assert "no container has started" in servletkit_cli(config, "reload", "cliy",
                                                          env=env).stderr
    server = start_container(config, f"http://127.0.0.1:{port}", workdir=tmp_path, env=env)
    try:
        plugin.write("2.1", SHOUT)
        reloaded = servletkit_cli(config, "reload", "cliy", env=env)
        assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
        assert reloaded.stdout.startswith("cliy: reloaded 2.0#1 -> 2.1#2 in ")
        plugin.write("2.2", "def broken(:\n")
        broken = servletkit_cli(config, "reload", "cliy", env=env)
        assert broken.returncode == 1
        assert "reload failed" in broken.stdout and "2.1#2 keeps serving" in broken.stdout
        listed = servletkit_cli(config, "plugins", env=env)
        assert listed.returncode == 0, listed.stderr
        [row] = [line for line in listed.stdout.splitlines() if line.startswith("cliy")]
        assert row.split()[:2] == ["cliy", "2.1#2"] and "live" in row
        assert "FAILED (import: SyntaxError" in row
    finally:
        stop_process(server, 20)
    token = (tmp_path / ".servletkit" / "admin-token").read_text().strip()
    assert token not in (tmp_path / "container.log").read_text()
    gone = servletkit_cli(config, "reload", "cliy", env=env)
    assert gone.returncode == 1 and "no container answers at" in gone.stderr
    assert "Traceback" not in gone.stderr
