"""`servletkit dev` without a homeserver: kept state, wiring, failures before any start."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import yaml

from servletkit.container.config import load_config, parse_config
from servletkit.container.config_tables import ConfigError
from servletkit.dev import checks, terminal, wiring
from servletkit.dev import command as dev
from servletkit.dev.embedded_synapse import SynapseServer, free_port, launch_synapse
from servletkit.dev.errors import DevError, step
from servletkit.dev.state import DevPaths, DevState
from servletkit.hooks.dispatcher import OnError
from tests.hooks.test_dispatcher import EVENT, Boom, dispatcher_for, policy

TOML = """
[server]
port = {port}
[dev]
state_dir = "state"
"""


def config_in(tmp_path: Path, extra: str = "", port: int = 18090):
    path = tmp_path / "servletkit.toml"
    path.write_text(TOML.format(port=port) + extra)
    return load_config(path)


class TestDevState:
    def test_generated_once_and_kept_private(self, tmp_path: Path) -> None:
        """A fresh state has distinct random secrets; saved and loaded it is the same, mode 0600."""
        path = tmp_path / "state" / "state.json"
        state = attrs.evolve(DevState(), homeserver_port=41234)
        secrets = [state.as_token, state.hs_token, state.module_secret,
                   state.registration_shared_secret, state.macaroon_secret_key, state.form_secret]
        assert len(set(secrets)) == len(secrets) and all(len(s) >= 40 for s in secrets)
        state.save(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert DevState.load(path) == state
        assert DevState.load(tmp_path / "missing.json") != state  # new secrets when none saved

    def test_unreadable_state_says_how_to_recover(self, tmp_path: Path) -> None:
        """A corrupt state.json is one message saying to delete it."""
        path = tmp_path / "state.json"
        path.write_text("{not json")
        with pytest.raises(DevError, match="delete it to generate new secrets"):
            DevState.load(path)

    def test_state_folder_is_relative_to_the_config(self, tmp_path: Path) -> None:
        """`[dev] state_dir` resolves against the config file's folder, default .servletkit/dev."""
        config = config_in(tmp_path)
        assert DevPaths.for_config(config).root == (tmp_path / "state").resolve()
        default = parse_config({}, tmp_path / "servletkit.toml")
        assert DevPaths.for_config(default).root == (tmp_path / ".servletkit" / "dev").resolve()


class TestSecretsOnDisk:
    def test_homeserver_yaml_is_private(self, tmp_path: Path) -> None:
        """homeserver.yaml holds Synapse's secrets: mode 0600, even over an older 0644 file."""
        workdir = tmp_path / "synapse"
        workdir.mkdir()
        config_path = workdir / "homeserver.yaml"
        config_path.write_text("{}")
        config_path.chmod(0o644)
        true = shutil.which("true")
        assert true is not None
        # `true` stands in for Python: only the file written before the start matters here
        server = launch_synapse(workdir, python=true,
                                extra_config={"form_secret": "private-form-secret"})
        server.stop()
        assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
        assert json.loads(config_path.read_text())["form_secret"] == "private-form-secret"
        assert [path.name for path in workdir.iterdir() if path.suffix == ".tmp"] == []


class TestDevConfig:
    @pytest.mark.parametrize(("table", "problem"), [
        ('test_user = "Bob"', "is not a Matrix user localpart"),
        ("homeserver_port = 70000", "must be a TCP port"),
        ('homeserver_port = "8008"', "must be an integer"),
        ("state = 1", "unknown key"),
    ])
    def test_bad_dev_keys_are_named(self, tmp_path: Path, table: str, problem: str) -> None:
        """A wrong `[dev]` key fails with the key and the problem."""
        path = tmp_path / "servletkit.toml"
        path.write_text(f"[dev]\n{table}\n")
        with pytest.raises(ConfigError, match=problem) as info:
            load_config(path)
        assert info.value.key.startswith("dev")


class TestWiring:
    def test_wired_config_uses_the_generated_secrets(self, tmp_path: Path) -> None:
        """Both wires on with the state's secrets; the store in the state folder; the HS URL."""
        config = config_in(tmp_path)
        state = DevState()
        paths = DevPaths.for_config(config)
        wired = wiring.wired_config(config, state, paths, "http://127.0.0.1:41234")
        assert wired.homeserver.url == "http://127.0.0.1:41234"
        assert wired.appservice is not None
        assert (wired.appservice.as_token, wired.appservice.hs_token) == (state.as_token,
                                                                        state.hs_token)
        assert [ns.regex for ns in wired.appservice.namespaces.rooms] == [".*"]
        assert wired.module.enabled and wired.module.secret == state.module_secret
        assert wired.resolve(wired.store.path) == paths.root / "servletkit.db"

    def test_the_policy_wire_is_on_with_the_kept_port(self, tmp_path: Path) -> None:
        """The policy wire is on as 127.0.0.1:<policy_port>, keys in the state folder, and
        reaches the dev homeserver by URL; a file's [policy] is kept but for server_urls."""
        config = config_in(tmp_path)
        state = attrs.evolve(DevState(), policy_port=48448)
        paths = DevPaths.for_config(config)
        policy = wiring.wired_config(config, state, paths, "http://127.0.0.1:41234").policy
        assert policy is not None and policy.server_name == "127.0.0.1:48448"
        assert policy.port == 48448 and config.resolve(policy.state_dir) == paths.root / "policy"
        assert policy.server_urls == {"localhost": "http://127.0.0.1:41234"}
        own = config_in(tmp_path, '[policy]\nserver_name = "p.test"\nport = 9448\n')
        kept = wiring.wired_config(own, state, paths, "http://127.0.0.1:41234").policy
        assert kept is not None and (kept.server_name, kept.port) == ("p.test", 9448)
        assert kept.server_urls == {"localhost": "http://127.0.0.1:41234"}

    def test_the_files_appservice_settings_are_kept_but_not_its_tokens(
        self, tmp_path: Path
    ) -> None:
        """An [appservice] section keeps its id and namespaces; tokens and url are the dev ones."""
        config = config_in(tmp_path, """
[appservice]
id = "mybridge"
as_token = "file-as"
hs_token = "file-hs"
url = "http://example.invalid:1"
[[appservice.namespaces.users]]
regex = "@_br_.*:localhost"
exclusive = true
""")
        state = DevState()
        wired = wiring.wired_config(config, state, DevPaths.for_config(config), "http://h:1")
        assert wired.appservice is not None
        assert wired.appservice.id == "mybridge"
        assert wired.appservice.url is None
        assert wired.appservice.as_token == state.as_token
        assert [ns.regex for ns in wired.appservice.namespaces.users] == ["@_br_.*:localhost"]

    def test_synapse_wiring_writes_the_registration_and_the_module_entry(
        self, tmp_path: Path
    ) -> None:
        """The homeserver.yaml keys load the registration (written, private) and the module."""
        config = config_in(tmp_path)
        state = DevState()
        paths = DevPaths.for_config(config)
        wired = wiring.wired_config(config, state, paths, "http://127.0.0.1:41234")
        keys = wiring.synapse_wiring(wired, paths)
        assert keys["app_service_config_files"] == [str(paths.registration)]
        registration = yaml.safe_load(paths.registration.read_text())
        assert registration["as_token"] == state.as_token
        assert registration["url"] == "http://127.0.0.1:18090"
        assert stat.S_IMODE(paths.registration.stat().st_mode) == 0o600
        [module] = keys["modules"]
        assert module["module"] == "servletkit.synapse.ServletkitModule"
        assert module["config"]["secret"] == state.module_secret


class TestFailuresBeforeStarting:
    def test_synapse_missing_names_the_install_command(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without Synapse installed, `servletkit dev` stops at once and says how to install it."""
        find_spec = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name == "synapse" else find_spec(name, *a))
        out = io.StringIO()
        with pytest.raises(DevError, match=r"pip install 'servletkit\[synapse\]'") as info:
            dev.run_dev(config_in(tmp_path), out)
        assert "scripts/bootstrap" in str(info.value)
        assert not (tmp_path / "state" / "dev.json").exists()

    def test_a_taken_port_names_the_setting(self, tmp_path: Path) -> None:
        """A port in use is refused with the setting to change."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            port = sock.getsockname()[1]
            config = config_in(tmp_path, port=port)
            with pytest.raises(DevError, match=rf"port {port} .*\[server\] port in"):
                checks.require_port(config, "127.0.0.1", port, "[server] port")
        assert checks.port_problem("127.0.0.1", port) is None


class TestFailuresAreOneMessage:
    @pytest.mark.parametrize("blocker", ["state", "state/dev.json/x"])
    def test_a_state_folder_that_cannot_be_written(self, tmp_path: Path, blocker: str) -> None:
        """A file where the folder should be (the log cannot be opened), or a dev.json that
        cannot be removed: one DevError naming the folder and [dev] state_dir."""
        blocked = tmp_path / blocker
        blocked.parent.mkdir(parents=True, exist_ok=True)
        blocked.write_text("in the way")  # works as root too, unlike chmod
        config = config_in(tmp_path, port=free_port())
        with pytest.raises(DevError) as info:
            dev.run_dev(config, io.StringIO())
        message = str(info.value)
        root = tmp_path / "state"
        assert f"make {root} a writable folder, or set another [dev] state_dir" in message
        assert str(config.path) in message
        assert "failed: [Errno" in message

    def test_a_homeserver_that_does_not_answer_json(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A "Synapse" that answers /versions but not /register with JSON: one DevError naming
        the step and synapse.log; the homeserver process is stopped, no dev.json is left."""
        launched: list[SynapseServer] = []

        def fake_synapse(workdir: Path, *, port: int, **_: Any) -> SynapseServer:
            versions = workdir / "docroot" / "_matrix" / "client" / "versions"
            versions.parent.mkdir(parents=True)
            versions.write_text('{"versions": ["v1.11"]}')
            process = subprocess.Popen(  # answers GET with files, POST with an HTML 501
                [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                 "--directory", str(workdir / "docroot")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            launched.append(SynapseServer(f"http://127.0.0.1:{port}", port, workdir,
                                          process=process))
            return launched[-1]

        monkeypatch.setattr(dev, "launch_synapse", fake_synapse)
        config = config_in(tmp_path, f"[module]\nport = {free_port()}\n", port=free_port())
        with pytest.raises(DevError) as info:
            dev.run_dev(config, io.StringIO())
        paths = DevPaths.for_config(config)
        assert str(info.value).startswith(
            "setting up the test account 'dev' failed: the answer is not JSON (")
        assert str(info.value).endswith(f"see {paths.synapse_log}")
        [server] = launched
        assert server.process.returncode is not None  # stopped and reaped by servletkit dev
        assert not paths.run_file.exists()

    def test_no_answer_names_the_request(self) -> None:
        """A refused connection becomes a DevError with the step, the request and the hint."""
        url = f"http://127.0.0.1:{free_port()}/_matrix/client/versions"
        with pytest.raises(DevError) as info, step("asking Synapse", "see synapse.log"):
            httpx.get(url)
        message = str(info.value)
        assert message.startswith(f"asking Synapse failed: no answer from GET {url} "
                                  f"(ConnectError: ")
        assert message.endswith("); see synapse.log")


class TestPluginFailuresInTheTerminal:
    @pytest.mark.parametrize("on_error", ["allow", "deny"])
    async def test_one_line_per_plugin_and_hook_then_a_count(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_error: OnError
    ) -> None:
        """Whatever its policy, a failing plugin is one terminal line (plugin, hook, exception,
        the log with the traceback); a burst is one line, the next one counts the rest."""
        monkeypatch.setattr(terminal, "FAILURE_LINE_INTERVAL_S", 0.5)
        dispatcher = dispatcher_for(("boom", Boom(), policy(on_error=on_error)))
        out, log_file = io.StringIO(), tmp_path / "servletkit.log"
        undo = terminal.route_logs(log_file, out)
        try:
            for _ in range(3):
                await dispatcher.intercept("on_send_event", EVENT)
            await asyncio.sleep(0.6)
            await dispatcher.intercept("on_send_event", EVENT)
        finally:
            undo()
        line = ("  [boom] failed in on_send_event: RuntimeError: plugin bug "
                f"(traceback in {log_file}")
        assert out.getvalue().splitlines() == [f"{line})", f"{line}; 2 more since the last line)"]
        assert log_file.read_text().count("Traceback") == 4  # every one, in full, in the log
