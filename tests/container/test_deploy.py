"""Hot deploy and undeploy (issue 13): a plugin installed into a running container is loaded
without a restart; an undeployed one drains, is destroyed and forgotten."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from servletkit import Veto
from servletkit.container.runtime import Container
from servletkit.dev.embedded_synapse import free_port, stop_process
from servletkit.testing import make_event, only_plugins, plugins_toml, running_container
from servletkit.testing.container import start_container
from tests.container.reload_support import PluginOnDisk, servletkit_cli
from tests.container.test_reload import VETO_X


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


@pytest.fixture
async def container(site: Path) -> AsyncIterator[Container]:
    async with running_container({}, {"plugins": only_plugins({})},
                                 include_installed=True) as c:
        yield c


@pytest.fixture
def late(site: Path) -> Iterator[PluginOnDisk]:
    plugin = PluginOnDisk(site, "latey")
    yield plugin
    plugin.forget()


async def test_deploy_loads_a_plugin_installed_after_the_start(
    container: Container, late: PluginOnDisk
) -> None:
    """The new distribution's plugin is found by its distribution's name and starts serving."""
    assert container.live_plugins == []
    late.write("1.0", VETO_X)
    [result] = await container.deploy(["LATEY"])  # names compare as packaging does
    assert result.ok and (result.old, result.new) == (None, "1.0#1")
    assert container.live_plugins == [late.name]
    outcome = await container.dispatcher.intercept("on_send_event", make_event("x"))
    assert outcome.decision == Veto("no x (version 1.0)")
    assert await container.deploy(["no-such-distribution"]) == []


async def test_undeploy_drains_destroys_and_forgets(
    container: Container, late: PluginOnDisk
) -> None:
    """Unloading waits for the version to be destroyed; its modules are gone; it can come
    back with a deploy."""
    late.write("1.0", VETO_X)
    await container.deploy([late.name])
    result = await container.unload(late.name)
    assert result.ok and result.old == "1.0#1" and result.distribution == late.name
    assert late.events == [("init", "1.0"), ("destroy", "1.0")]
    assert container.live_plugins == [] and late.name not in sys.modules
    outcome = await container.dispatcher.intercept("on_send_event", make_event("x"))
    assert outcome.decision is None
    assert not (await container.unload(late.name)).ok
    late.write("1.1", VETO_X)
    [again] = await container.deploy([late.name])
    assert again.ok and again.new == "1.1#2"


PLUGIN_MODULE = """
from servletkit import Veto, hookimpl

@hookimpl
def on_send_event(event, context):
    return Veto("deployed")
"""


def plugin_wheel(folder: Path) -> Path:
    """``deployed_plugin-3.0-py3-none-any.whl``, as a build backend would make it."""
    dist_info = "deployed_plugin-3.0.dist-info"
    files = {
        "deployed_plugin/__init__.py": PLUGIN_MODULE,
        f"{dist_info}/METADATA": "Metadata-Version: 2.1\nName: deployed-plugin\nVersion: 3.0\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n",
        f"{dist_info}/entry_points.txt": "[servletkit.plugins]\ndeployed = deployed_plugin\n",
    }
    record = [f"{name},sha256={_digest(text)},{len(text.encode())}"
              for name, text in files.items()]
    files[f"{dist_info}/RECORD"] = "\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n"
    wheel = folder / "deployed_plugin-3.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return wheel


def _digest(text: str) -> str:
    raw = hashlib.sha256(text.encode()).digest()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def throwaway_environment(root: Path) -> Path:
    """A venv (without pip of its own) that sees this one's packages, so that a deploy
    installs into it and never into ``.venv``; returns its Python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    Path(purelib, "servletkit_parent.pth").write_text(
        f"import site; site.addsitedir({ours!r})\n")
    return python


@pytest.mark.integration
def test_deploy_and_undeploy_commands(tmp_path: Path) -> None:
    """``servletkit deploy WHEEL`` installs with pip into the running container's environment
    and loads the plugin; ``servletkit undeploy NAME --uninstall`` takes it out again."""
    python = throwaway_environment(tmp_path / "env")
    wheel = plugin_wheel(tmp_path)
    port = free_port()
    config = tmp_path / "servletkit.toml"
    config.write_text(f"[server]\nport = {port}\n" + plugins_toml(only_plugins({})))

    def servletkit(*args: str) -> subprocess.CompletedProcess[str]:
        return servletkit_cli(config, *args, python=str(python), timeout=300)

    server = start_container(config, f"http://127.0.0.1:{port}", workdir=tmp_path,
                             python=str(python))
    try:
        deployed = servletkit("deploy", str(wheel), "--no-deps")
        assert deployed.returncode == 0, deployed.stderr
        assert deployed.stdout.startswith("deployed: reloaded not loaded -> 3.0#1 in ")
        health = httpx.get(f"http://127.0.0.1:{port}/_servletkit/health").json()
        assert health["plugins"] == ["deployed"]
        undeployed = servletkit("undeploy", "deployed", "--uninstall")
        assert undeployed.returncode == 0, undeployed.stderr
        assert undeployed.stdout.splitlines()[0].startswith("deployed: unloaded 3.0#1 in ")
        assert "uninstalled deployed-plugin" in undeployed.stdout
        assert httpx.get(f"http://127.0.0.1:{port}/_servletkit/health").json()["plugins"] == []
        assert not list((tmp_path / "env").rglob("deployed_plugin*"))
    finally:
        stop_process(server, 20)
