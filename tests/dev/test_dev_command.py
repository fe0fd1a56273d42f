"""`servletkit dev` as a user runs it: a subprocess, driven through its dev.json.

Two starts per session: a cold one (empty state folder, raced by a second
`servletkit dev` that must lose) that a client uses to talk to the example
plugins and to a plugin that fails, then SIGTERM, then a warm one on the same
state. Plus the failures that stop it before Synapse starts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

from servletkit.dev.embedded_synapse import free_port
from servletkit.testing import only_plugins, plugin_site, plugins_toml, python_path_env
from servletkit.testing.dev import DevProcess

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[2] / "docs"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
REASON = "This room does not take that word (servletkit word_filter)"
FRAGILE = '''
from servletkit import hookimpl


@hookimpl
def on_send_event(event, context):
    """Fails on messages that start with "!crash", as a plugin with a bug does."""
    body = event.content.get("body")
    if isinstance(body, str) and body.startswith("!crash"):
        raise RuntimeError(f"cannot handle {body!r}")
'''


def write_config(folder: Path, plugins: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """A config on free ports running the example plugins and ``plugins`` (name → table).

    No other installed plugin runs, so the outcome does not depend on what is installed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "servletkit.toml"
    tables = only_plugins({
        "word_filter": {"words": ["forbidden", "spam"], "reason": REASON},
        "formatter": {"prefix": "/shout "},
        **(plugins or {}),
    })
    path.write_text(f"""
[server]
port = {free_port()}
[module]
port = {free_port()}
[dev]
state_dir = "state"
{plugins_toml(tables)}""")
    return path


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


class Client:
    """A few lines of client-server API, as a newcomer would write them with httpx."""

    def __init__(self, facts: dict[str, Any]) -> None:
        self.http = httpx.Client(base_url=facts["homeserver_url"], timeout=10)
        user = facts["test_user"]
        response = self.http.post("/_matrix/client/v3/login", json={
            "type": "m.login.password", "password": user["password"],
            "identifier": {"type": "m.id.user", "user": user["localpart"]},
        })
        assert response.status_code == 200, response.text
        assert response.json()["user_id"] == user["user_id"]
        self.http.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def send(self, room_id: str, body: str) -> httpx.Response:
        return self.http.put(
            f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t{time.time_ns()}",
            json={"msgtype": "m.text", "body": body},
        )

    def bodies(self, room_id: str) -> list[str]:
        response = self.http.get(f"/_matrix/client/v3/rooms/{room_id}/messages",
                                 params={"dir": "b", "limit": 50})
        assert response.status_code == 200, response.text
        return [event["content"].get("body") for event in response.json()["chunk"]
                if event["type"] == "m.room.message"]

    def close(self) -> None:
        self.http.close()


@attrs.frozen
class Conversation:
    room_id: str
    hello: httpx.Response
    forbidden: httpx.Response
    shout: httpx.Response
    shout_stored: dict[str, Any]


@attrs.frozen
class Stopped:
    status: int
    before: set[int]
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def dev_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dev")


@pytest.fixture(scope="module")
def dev_config(dev_folder: Path) -> Path:
    """The example plugins, and `fragile`, which refuses what it fails on (on_error deny)."""
    return write_config(dev_folder / "project", {"fragile": {"on_error": "deny"}})


@pytest.fixture(scope="module")
def dev_env(dev_folder: Path) -> dict[str, str]:
    """Where `fragile` is installed."""
    return python_path_env(plugin_site(dev_folder, "fragile", FRAGILE))


@attrs.frozen
class Race:
    """Two `servletkit dev` launched at the same moment on one empty state folder."""

    winner: DevProcess
    loser: DevProcess
    loser_status: int


@pytest.fixture(scope="module")
def race(dev_config: Path, dev_env: dict[str, str]) -> Iterator[Race]:
    runs = [DevProcess.launch(dev_config, dev_env) for _ in range(2)]
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while all(run.process.poll() is None for run in runs):
            assert time.monotonic() < deadline, "neither servletkit dev gave way"
            time.sleep(0.02)
        loser, winner = sorted(runs, key=lambda run: run.process.poll() is None)
        status = loser.wait(STOP_TIMEOUT_S)
        winner.wait_ready(START_TIMEOUT_S)
        yield Race(winner, loser, status)
    finally:
        for run in runs:
            if run.process.poll() is None:
                run.kill()


@pytest.fixture(scope="module")
def first_run(race: Race) -> DevProcess:
    return race.winner


@pytest.fixture(scope="module")
def conversation(first_run: DevProcess) -> Conversation:
    client = Client(first_run.facts)
    try:
        room_id = client.http.post("/_matrix/client/v3/createRoom", json={}).json()["room_id"]
        hello = client.send(room_id, "hello servletkit")
        forbidden = client.send(room_id, "this word is forbidden")
        shout = client.send(room_id, "/shout hi there")
        stored = client.http.get(
            f"/_matrix/client/v3/rooms/{room_id}/event/{shout.json()['event_id']}").json()
        return Conversation(room_id, hello, forbidden, shout, stored)
    finally:
        client.close()


@pytest.fixture(scope="module")
def docs_client_output(first_run: DevProcess) -> str:
    """What docs/dev_client.py (shown in the README) prints against this dev homeserver."""
    result = subprocess.run([sys.executable, str(DOCS / "dev_client.py"), str(first_run.run_file)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def first_stopped(
    first_run: DevProcess, conversation: Conversation, docs_client_output: str
) -> Stopped:
    before = descendants(first_run.process.pid)
    status = first_run.stop(STOP_TIMEOUT_S)
    return Stopped(status, before, first_run.stdout, first_run.stderr)


def test_dev_json_has_the_documented_facts(first_run: DevProcess) -> None:
    """dev.json names the homeserver, the container, the server name, the account and the pids."""
    facts = first_run.facts
    assert facts["version"] == 1
    assert facts["server_name"] == "localhost"
    assert facts["test_user"]["user_id"] == "@dev:localhost"
    assert httpx.get(f"{facts['homeserver_url']}/_matrix/client/versions").status_code == 200
    health = httpx.get(f"{facts['container_url']}/_servletkit/health").json()
    assert set(health["plugins"]) == {"word_filter", "formatter", "fragile"}
    assert health["server"] == {"loop": "uvloop", "http": "httptools"}  # as servletkit run
    assert facts["plugins"] == {"fragile": ["on_send_event"], "word_filter": ["on_send_event"],
                                "formatter": ["on_send_event"]}
    assert facts["pids"]["synapse"] in descendants(first_run.process.pid)
    assert Path(facts["logs"]["synapse"]).exists() and Path(facts["logs"]["servletkit"]).exists()


def test_the_example_plugins_decide(conversation: Conversation) -> None:
    """An ordinary message passes; word_filter vetoes with its reason; formatter upper-cases."""
    assert conversation.hello.status_code == 200
    assert conversation.forbidden.status_code == 403
    assert conversation.forbidden.json() == {"errcode": "M_FORBIDDEN", "error": REASON}
    assert conversation.shout.status_code == 200
    assert conversation.shout_stored["content"]["body"] == "HI THERE"


def test_policy_protect_makes_the_dev_policy_server_sign(first_run: DevProcess,
                                                          dev_config: Path) -> None:
    """`servletkit policy protect ROOM` (one command) makes the dev policy wire the room's
    policy server: Synapse then stores messages with its policy signature."""
    import asyncio
    from urllib.parse import quote

    from servletkit.wires.policy.federation import FederationClient
    from servletkit.wires.policy.keys import load_keys

    facts = first_run.facts
    policy = facts["policy_server"]
    client = Client(facts)
    try:
        room_id = client.http.post("/_matrix/client/v3/createRoom", json={}).json()["room_id"]
        done = subprocess.run([sys.executable, "-m", "servletkit.container.cli", "policy",
                               "protect", room_id, "--config", str(dev_config)],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["m.room.policy"]["via"] == policy["server_name"]
        sent = client.send(room_id, "hello, policy server")
        assert sent.status_code == 200, sent.text
    finally:
        client.close()

    async def stored() -> Any:
        async with httpx.AsyncClient() as http:
            keys = load_keys(Path(policy["state_dir"]))
            federation = FederationClient(policy["server_name"], keys.federation, http)
            return await federation.request(
                "GET", "localhost", "/_matrix/federation/v1/event/"
                + quote(sent.json()["event_id"], safe=""), base_url=facts["homeserver_url"])

    [pdu] = asyncio.run(stored())["pdus"]
    assert list(pdu["signatures"][policy["server_name"]]) == ["ed25519:policy_server"]


def test_the_documented_client_sees_the_plugins_act(docs_client_output: str) -> None:
    """docs/dev_client.py prints the allow, the veto with its reason, and the modification."""
    assert docs_client_output.splitlines() == [
        "'hello, servletkit': stored as 'hello, servletkit'",
        f"'this word is forbidden': refused, 403 {REASON}",
        "'/shout make it loud': stored as 'MAKE IT LOUD'",
    ]


def test_docs_show_the_client_that_is_tested() -> None:
    """The README contains docs/dev_client.py verbatim (the example is never pasted by hand)."""
    script = (DOCS / "dev_client.py").read_text()
    code = script.split('"""\n\n', 1)[1]  # without the module docstring
    assert code in (DOCS.parent / "README.md").read_text()


def test_of_two_started_at_once_exactly_one_runs(race: Race, dev_config: Path) -> None:
    """Two on one empty state folder at the same moment: one runs; the other exits 1 with one
    line naming the folder, and the state it leaves is the winner's."""
    assert race.loser_status == 1, race.loser.stderr
    message = race.loser.stderr.strip()
    state_folder = dev_config.parent / "state"
    assert message in (
        f"servletkit: servletkit dev is already running for {state_folder} "
        f"(pid {race.winner.process.pid}): stop it first (Ctrl-C in its terminal, or kill "
        f"{race.winner.process.pid})",
        f"servletkit: servletkit dev is already running for {state_folder} (just starting): "
        f"stop it first (Ctrl-C in its terminal)",
    )
    state = json.loads((state_folder / "state.json").read_text())
    assert race.winner.facts["homeserver_url"] == f"http://127.0.0.1:{state['homeserver_port']}"
    assert json.loads(race.winner.run_file.read_text()) == race.winner.facts


def test_a_plugin_failure_is_one_line_in_the_terminal(
    first_run: DevProcess, conversation: Conversation
) -> None:
    """A plugin that raises: its on_error (deny) refuses the message, and the terminal shows
    the plugin, the hook, the exception and where the traceback is, once for a burst."""
    client = Client(first_run.facts)
    try:
        refused = [client.send(conversation.room_id, f"!crash {n}") for n in range(3)]
    finally:
        client.close()
    assert [response.status_code for response in refused] == [403] * 3
    assert refused[0].json()["error"] == "refused because the plugin 'fragile' failed"
    log_file = first_run.facts["logs"]["servletkit"]
    lines = [line for line in first_run.stdout.splitlines() if "[fragile]" in line]
    assert lines == [f"  [fragile] failed in on_send_event: RuntimeError: cannot handle "
                     f"'!crash 0' (traceback in {log_file})"]
    log = Path(log_file).read_text()
    assert log.count("plugin 'fragile' failed in on_send_event: RuntimeError") == 3
    assert "Traceback" in log


def test_sigterm_stops_synapse_and_the_container(
    first_run: DevProcess, first_stopped: Stopped
) -> None:
    """SIGTERM: exit 0, no child process left, dev.json removed, the summary was printed."""
    assert first_stopped.status == 0, first_stopped.stderr
    assert first_run.facts["pids"]["synapse"] in first_stopped.before
    assert not [pid for pid in first_stopped.before if alive(pid)]
    assert not first_run.run_file.exists()
    out = first_stopped.stdout
    assert "starting Synapse" in out and "created the test account @dev:localhost" in out
    assert first_run.facts["homeserver_url"] in out
    assert first_run.facts["test_user"]["password"] in out
    assert "word_filter  on_send_event" in out
    # what the example plugins log is shown, once per decision, made before the event is stored
    assert out.count("[word_filter] vetoed @dev:localhost's message") == 2  # test and docs client
    assert "it contains 'forbidden' (before_store)" in out
    assert "[formatter] modified @dev:localhost's message: '/shout hi there' becomes 'HI THERE'" \
        in out
    assert "servletkit dev: stopped" in out
    assert "Traceback" not in first_stopped.stderr


@pytest.fixture(scope="module")
def second_run(
    dev_config: Path, dev_env: dict[str, str], first_stopped: Stopped
) -> Iterator[DevProcess]:
    run = DevProcess.start(dev_config, dev_env, timeout=START_TIMEOUT_S)
    yield run
    if run.process.poll() is None:
        run.kill()


def test_a_second_start_reuses_the_state(
    first_run: DevProcess, conversation: Conversation, second_run: DevProcess
) -> None:
    """Same URL and account; the account logs in; the earlier room and messages are there."""
    assert second_run.facts["homeserver_url"] == first_run.facts["homeserver_url"]
    assert second_run.facts["test_user"] == first_run.facts["test_user"]
    client = Client(second_run.facts)
    try:
        bodies = client.bodies(conversation.room_id)
        assert "hello servletkit" in bodies and "HI THERE" in bodies
        assert "this word is forbidden" not in bodies
        assert client.send(conversation.room_id, "spam again").status_code == 403
    finally:
        client.close()


def test_a_second_dev_on_the_same_state_is_refused(
    dev_config: Path, dev_env: dict[str, str], second_run: DevProcess
) -> None:
    """While one runs, another on the same state folder exits 1 with one line and leaves the
    first alone: its dev.json, its state.json, its processes and its ports."""
    state_folder = dev_config.parent / "state"
    before = {name: (state_folder / name).read_bytes() for name in ("dev.json", "state.json")}
    other = DevProcess.launch(dev_config, dev_env)
    assert other.wait(STOP_TIMEOUT_S) == 1, other.stderr
    assert other.stderr.strip() == (
        f"servletkit: servletkit dev is already running for {state_folder} "
        f"(pid {second_run.process.pid}): stop it first (Ctrl-C in its terminal, or kill "
        f"{second_run.process.pid})")
    assert {name: (state_folder / name).read_bytes() for name in before} == before
    assert second_run.process.poll() is None
    assert httpx.get(f"{second_run.facts['homeserver_url']}/_matrix/client/versions").is_success
    health = httpx.get(f"{second_run.facts['container_url']}/_servletkit/health")
    assert health.is_success


def test_synapse_dying_ends_dev_with_a_message(second_run: DevProcess) -> None:
    """If Synapse dies under it, servletkit dev says so, stops the container and exits 1."""
    before = descendants(second_run.process.pid)
    os.kill(second_run.facts["pids"]["synapse"], signal.SIGKILL)
    assert second_run.wait(STOP_TIMEOUT_S) == 1
    out, err = second_run.stdout, second_run.stderr
    assert "Synapse exited on its own (status -9)" in err and "Traceback" not in err
    assert not [pid for pid in before if alive(pid)]
    assert not second_run.run_file.exists()
    assert "created the test account" not in out  # it was a warm start


def test_a_taken_port_is_one_message(tmp_path: Path) -> None:
    """The container's port in use: exit 1 with the port and the setting, no traceback."""
    config = write_config(tmp_path)
    port = int(config.read_text().split("port = ")[1].split()[0])
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
        run = DevProcess.launch(config)
        status = run.wait(STOP_TIMEOUT_S)
    assert status == 1
    err = run.stderr
    assert f"port {port} on 127.0.0.1 is not available" in err
    assert "[server] port" in err and "Traceback" not in err
    assert not (tmp_path / "state" / "synapse" / "homeserver.yaml").exists()


def test_a_plugin_that_fails_to_load_is_one_message(tmp_path: Path) -> None:
    """An installed plugin that cannot be imported: exit 1, its name, the fix, no traceback."""
    site = plugin_site(tmp_path, "broken", "import no_such_module_for_servletkit_tests\n")
    config = write_config(tmp_path / "project")
    run = DevProcess.launch(config, env=python_path_env(site))
    assert run.wait(STOP_TIMEOUT_S) == 1
    err = run.stderr
    assert "plugin 'broken' failed to import: ModuleNotFoundError" in err
    assert "enabled = false in [plugins.broken]" in err
    assert "Traceback" not in err
    log = (tmp_path / "project" / "state" / "servletkit.log").read_text()
    assert "Traceback" in log  # the details are in the log


SLOW_START = '''
import asyncio

from servletkit import hookimpl


@hookimpl
async def servlet_init(context):
    """Takes its time to start, like a plugin that connects somewhere."""
    context.log.info("starting slowly")
    await asyncio.sleep(2)
'''


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_start_up_exits_non_zero(
    tmp_path: Path, signum: signal.Signals, status: int
) -> None:
    """Ctrl-C (or SIGTERM) before everything is up: 128 + the signal, as a shell reports it,
    nothing left behind, no traceback."""
    site = plugin_site(tmp_path, "slow", SLOW_START)
    run = DevProcess.launch(write_config(tmp_path / "project"), env=python_path_env(site))
    deadline = time.monotonic() + START_TIMEOUT_S
    while "[slow] starting slowly" not in run.stdout:
        assert run.process.poll() is None and time.monotonic() < deadline, run.stderr
        time.sleep(0.02)
    started = descendants(run.process.pid)  # Synapse: plugins start once its module connects
    run.process.send_signal(signum)
    assert run.wait(STOP_TIMEOUT_S) == status, run.stderr
    assert f"servletkit dev: interrupted ({signum.name}) while starting; stopping…" in run.stdout
    assert "servletkit dev: stopped" in run.stdout
    assert run.stderr == ""
    assert not run.run_file.exists()
    assert started and not [pid for pid in started if alive(pid)]


def test_a_chatty_plugin_does_not_block_servletkit_dev(tmp_path: Path) -> None:
    """Far more output than a pipe holds: DevProcess keeps all of it and dev is never blocked."""
    lines = 20_000  # ~1.4 MB, twenty times a Linux pipe buffer
    site = plugin_site(tmp_path, "chatty", f"""
import sys
for n in range({lines}):
    print(f"chatty line {{n:06d}} " + "x" * 50)
    print(f"chatty error {{n:06d}}", file=sys.stderr)
raise ImportError("chatty gives up")
""")
    run = DevProcess.launch(write_config(tmp_path / "project"), env=python_path_env(site))
    assert run.wait(STOP_TIMEOUT_S) == 1
    out, err = run.stdout, run.stderr
    assert out.count("chatty line ") == lines and f"chatty line {lines - 1:06d}" in out
    assert err.count("chatty error ") == lines
    assert "plugin 'chatty' failed to import: ImportError: chatty gives up" in err
    assert not any(path.exists() for path in run.output_files)  # kept in memory, files removed


def test_the_state_folder_is_private(first_run: DevProcess) -> None:
    """The state folder holds secrets, tokens and the signing key: only its owner may enter."""
    state_folder = first_run.run_file.parent
    assert state_folder.stat().st_mode & 0o777 == 0o700
