"""``servletkit new``: the scaffold installs, passes its own tests, and ruff is clean on it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from servletkit.container.cli import main
from servletkit.hooks.specs import HOOKS
from servletkit.testing import only_plugins, plugins_toml

BIN = Path(sys.executable).parent


def run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(part) for part in command], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=300, check=False)


def scaffold_and_test(tmp_path: Path, name: str, hooks: str) -> Path:
    folder = tmp_path / name
    assert main(["new", name, "--hooks", hooks, "--dir", str(folder)]) == 0
    # a throwaway venv that sees servletkit (and pytest) installed in this one, into which
    # the scaffold is installed as its README says
    venv = tmp_path / "venv"
    made = run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    ours, theirs = (run(exe, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                        cwd=tmp_path).stdout.strip() for exe in (sys.executable, python))
    # addsitedir, unlike PYTHONPATH, also runs the .pth files of servletkit's editable install
    (Path(theirs) / "parent_venv.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    # this venv's pip, installing into the throwaway one (pip --python)
    installed = run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
                    "--no-build-isolation", "-e", folder, cwd=folder, env=env)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    tested = run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=folder, env=env)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    linted = run(BIN / "ruff", "check", "--no-cache", ".", cwd=folder)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    found = run(python, "-c", "from importlib.metadata import entry_points; "
                "print([e.value for e in entry_points(group='servletkit.plugins')])",
                cwd=tmp_path, env=env)
    module = name.replace("-", "_")
    assert repr(module) in found.stdout, found.stdout + found.stderr
    # the container finds it by its entry point, loads it and runs its lifecycle
    config = tmp_path / "servletkit.toml"
    config.write_text(plugins_toml(only_plugins({module: {}})))
    checked = run(python, "-m", "servletkit.container.cli", "check", "--config", config,
                  cwd=tmp_path, env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert module in checked.stdout, checked.stdout
    return folder


def test_the_default_scaffold_installs_and_passes_its_tests(tmp_path: Path) -> None:
    folder = scaffold_and_test(tmp_path, "quiet-room", "on_send_event")
    source = (folder / "quiet_room" / "__init__.py").read_text()
    assert "async def on_send_event(event: Event, context: PluginContext)" in source
    assert "servletkit dev" in (folder / "README.md").read_text()
    assert 'quiet_room = "quiet_room"' in (folder / "pyproject.toml").read_text()


def test_hooks_without_config_scaffold_and_pass(tmp_path: Path) -> None:
    folder = scaffold_and_test(tmp_path, "bot", "servlet_init,on_stored_event")
    assert "CONFIG: dict[str, object] = {}" in (folder / "tests" / "test_bot.py").read_text()


def test_every_hook_scaffolds_installs_and_passes(tmp_path: Path) -> None:
    folder = scaffold_and_test(tmp_path, "everything", ",".join(sorted(HOOKS.names)))
    source = (folder / "everything" / "__init__.py").read_text()
    for hook in HOOKS.names:
        assert f"async def {hook}(" in source


@pytest.mark.parametrize(("argv", "message"), [
    (["new", "2fast"], "does not make a valid Python module name"),
    (["new", "bad-"], "not a valid distribution name"),
    (["new", "has space"], "not a valid distribution name"),
    (["new", "json"], "would shadow the module 'json'"),
    (["new", "ok", "--hooks", "on_send_evnt"], "unknown hook 'on_send_evnt'; did you mean "
     "on_send_event?"),
])
def test_refusals_are_one_line(argv: list[str], message: str, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_an_existing_non_empty_folder_is_refused(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    assert main(["new", "hello", "--dir", str(tmp_path)]) == 1
    assert "already exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_an_empty_folder_is_used(tmp_path: Path) -> None:
    assert main(["new", "hello", "--dir", str(tmp_path)]) == 0
    assert (tmp_path / "hello" / "__init__.py").is_file()


@pytest.mark.integration
def test_the_scaffold_runs_under_servletkit_dev(tmp_path: Path) -> None:
    """Built and installed (here on PYTHONPATH), it vetoes through a real Synapse."""
    import httpx

    from servletkit.dev.embedded_synapse import free_port
    from servletkit.testing import python_path_env
    from servletkit.testing.dev import DevProcess

    folder = tmp_path / "quiet-room"
    assert main(["new", "quiet-room", "--dir", str(folder)]) == 0
    site = tmp_path / "site"
    built = run(sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                "--target", site, folder, cwd=tmp_path)
    assert built.returncode == 0, built.stdout + built.stderr
    config = tmp_path / "servletkit.toml"
    config.write_text(f"[server]\nport = {free_port()}\n[module]\nport = {free_port()}\n"
                      '[dev]\nstate_dir = "state"\n'
                      + plugins_toml(only_plugins({"quiet_room": {"blocked_words": ["spam"]}})))
    dev = DevProcess.start(config, python_path_env(site), timeout=120.0)
    try:
        facts, user = dev.facts, dev.facts["test_user"]
        with httpx.Client(base_url=facts["homeserver_url"], timeout=30) as client:
            login = client.post("/_matrix/client/v3/login", json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user["localpart"]},
                "password": user["password"]}).json()
            client.headers["Authorization"] = f"Bearer {login['access_token']}"
            room = client.post("/_matrix/client/v3/createRoom", json={}).json()["room_id"]
            sent = client.put(f"/_matrix/client/v3/rooms/{room}/send/m.room.message/1",
                              json={"msgtype": "m.text", "body": "buy spam"})
    finally:
        dev.stop()
    assert sent.status_code == 403, sent.text
    assert "'spam' is not allowed here" in sent.json()["error"]
