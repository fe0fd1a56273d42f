"""``[module]`` in servletkit.toml, ``servletkit synapse-config``, and the module's imports."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import yaml

from servletkit.container.cli import main
from servletkit.container.config import ModuleCallbacks, parse_config
from servletkit.container.config_tables import ConfigError
from servletkit.synapse import ServletkitModule
from servletkit.synapse.settings import DEFAULT_POLICIES
from servletkit.testing.synapse import free_port


class TestModuleSection:
    def test_off_by_default(self) -> None:
        """Without a [module] table the module wire is off."""
        assert parse_config({}).module.enabled is False

    def test_enabled_needs_a_secret(self) -> None:
        """enabled = true without a secret fails, naming the section and the fix."""
        with pytest.raises(ConfigError, match=r"module: secret: must be set when enabled"):
            parse_config({"module": {"enabled": True}})

    def test_unknown_callback(self) -> None:
        """A callback the module does not have is refused by name."""
        with pytest.raises(ConfigError, match=r"module\.callbacks\.check_foo: unknown key"):
            parse_config({"module": {"callbacks": {"check_foo": {}}}})

    def test_timeout_must_be_positive(self) -> None:
        """A zero budget is refused."""
        with pytest.raises(ConfigError, match="timeout_ms: must be positive"):
            parse_config({"module": {"callbacks": {"user_may_invite": {"timeout_ms": 0}}}})

    def test_secret_not_in_repr(self) -> None:
        """The secret never shows in a repr (logs, tracebacks)."""
        config = parse_config({"module": {"enabled": True, "secret": "hush-hush"}})
        assert "hush-hush" not in repr(config)

    def test_callbacks_match_the_module(self) -> None:
        """[module.callbacks] has a table for exactly the callbacks the module has policies for."""
        assert [f.name for f in attrs.fields(ModuleCallbacks)] == list(DEFAULT_POLICIES)


class TestSynapseConfigCommand:
    def test_prints_a_working_modules_entry(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The printed YAML is a modules: list the module's own parser accepts."""
        path = tmp_path / "servletkit.toml"
        path.write_text('[module]\nenabled = true\nport = 9100\nsecret = "s3cret \\"q\\""\n'
                        "[module.callbacks.check_login_for_spam]\nfail_open = true\n")
        assert main(["synapse-config", "--config", str(path)]) == 0
        printed = yaml.safe_load(capsys.readouterr().out)
        [entry] = printed["modules"]
        assert entry["module"] == "servletkit.synapse.ServletkitModule"
        settings = ServletkitModule.parse_config(entry["config"])
        assert (settings.port, settings.secret) == (9100, 's3cret "q"')
        assert settings.policies["check_login_for_spam"].fail_open is True
        assert settings.policies["check_event_allowed"] == DEFAULT_POLICIES["check_event_allowed"]

    def test_several_instances_print_containers(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With [module] containers (every instance's address), the entry lists them as the
        module's ``containers`` (no host and port) and the module's parser accepts it."""
        path = tmp_path / "servletkit.toml"
        path.write_text('[module]\nenabled = true\nhost = "10.0.0.11"\nsecret = "s"\n'
                        'containers = ["10.0.0.11:8091", "10.0.0.12:8091", "mod3.internal:9000"]\n')
        assert main(["synapse-config", "--config", str(path)]) == 0
        [entry] = yaml.safe_load(capsys.readouterr().out)["modules"]
        assert list(entry["config"])[:2] == ["containers", "secret"]
        assert "host" not in entry["config"] and "port" not in entry["config"]
        settings = ServletkitModule.parse_config(entry["config"])
        assert settings.addresses == (("10.0.0.11", 8091), ("10.0.0.12", 8091),
                                      ("mod3.internal", 9000))

    @pytest.mark.parametrize(("containers", "key", "problem"), [
        (["10.0.0.11"], "module.containers[0]", "host:port"),
        (["10.0.0.11:70000"], "module.containers[0]", "host:port"),
        (["a:1", "a:1"], "module.containers", "listed twice"),
    ])
    def test_containers_errors(self, tmp_path: Path, containers: list[str], key: str,
                               problem: str) -> None:
        """A wrong [module] containers names the key and what is expected."""
        with pytest.raises(ConfigError, match=problem) as info:
            parse_config({"module": {"enabled": True, "secret": "s", "containers": containers}},
                         tmp_path / "servletkit.toml")
        assert info.value.key == key

    def test_module_off(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """With the module wire off it says how to turn it on, and exits 1."""
        path = tmp_path / "servletkit.toml"
        path.write_text("[server]\nport = 8090\n")
        assert main(["synapse-config", "--config", str(path)]) == 1
        assert "set [module] enabled = true" in capsys.readouterr().err


def test_run_with_the_module_port_taken(tmp_path: Path) -> None:
    """`servletkit run` with [module] port taken: one line naming it, exit 1, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "servletkit.toml"
        path.write_text(f'[server]\nhost = "127.0.0.1"\nport = {free_port()}\n'
                        f'[module]\nenabled = true\nport = {port}\nsecret = "s"\n'
                        f'[store]\npath = "{tmp_path / "servletkit.db"}"\n')
        run = subprocess.run(
            [sys.executable, "-m", "servletkit.container.cli", "run", "--config", str(path)],
            capture_output=True, text=True, timeout=30,
        )
    assert run.returncode == 1
    assert "Traceback" not in run.stderr + run.stdout
    assert run.stderr.strip().splitlines()[-1] == (
        f"servletkit: port {port} on 127.0.0.1 is not available (Address already in use): "
        f"stop the process using it, or choose another [module] port in {path}"
    )


def test_module_imports_nothing_of_the_container() -> None:
    """Loading the module in Synapse pulls in no web stack and no container code."""
    code = ("import sys, servletkit.synapse\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('starlette', 'httpx', 'uvicorn', 'anyio') or m.startswith('servletkit.container')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
