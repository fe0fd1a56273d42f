"""``servletkit dev``: a real homeserver wired to the container, in one command.

The container (with every plugin the config enables) starts listening first,
in this process, so the homeserver never sees the appservice down. Then an
embedded Synapse (:mod:`servletkit.dev.embedded_synapse`: SQLite,
127.0.0.1, relaxed rate limits) starts as a child process, with the module
wire's ``modules:`` entry and the appservice registration written for it. The
plugins' ``servlet_init`` runs once Synapse's module has connected, so a
plugin may already act in Matrix from it. A test account is created once,
Synapse is asked to ping the appservice, and the facts a client needs are
printed and written to ``dev.json``.

Everything lives in the state folder (``[dev] state_dir``, default
``.servletkit/dev`` next to the config file):

``state.json``
    Generated on the first start and kept (mode 0600): the appservice tokens,
    the module wire's secret, Synapse's own secrets, the test account's
    password and the homeserver port. Delete the folder to start afresh.
``synapse/``
    Synapse's ``homeserver.yaml`` (mode 0600: it holds Synapse's secrets),
    SQLite database, media, signing key and ``synapse.log``: users, rooms and
    history survive a restart.
``appservice-registration.yaml``
    The registration Synapse loads (``servletkit registration`` for this config).
``servletkit.log``
    The container's log: plugins, wires, HTTP requests.
``dev.lock``
    Locked (``flock``) by the ``servletkit dev`` that owns the folder, for as
    long as it runs, and holding its pid. Another ``servletkit dev`` on the
    same folder refuses to start before it changes anything here; the lock
    goes with the process, however it ends.
``dev.json``
    Written once everything answers, removed on a clean stop, so its presence
    means "running". One JSON object (format version 1)::

        {
          "version": 1,
          "homeserver_url": "http://127.0.0.1:PORT",   # for Matrix clients
          "container_url": "http://127.0.0.1:8090",    # the container (appservice wire)
          "module_wire": "127.0.0.1:8091",             # where Synapse's module connects
          "policy_server": {"server_name": "127.0.0.1:PORT",  # the policy wire (MSC4284)
                            "url": "https://127.0.0.1:PORT", "state_dir": "/abs/policy"},
          "server_name": "localhost",
          "test_user": {"user_id": "@dev:localhost", "localpart": "dev",
                        "password": "..."},
          "plugins": {"word_filter": ["on_send_event"], ...},   # live ones, their hooks
          "logs": {"servletkit": "/abs/servletkit.log", "synapse": "/abs/synapse.log"},
          "pids": {"servletkit": 1234, "synapse": 1240},
          "extensions": {"xmpp": {...}}   # each dev extension's facts (--NAME flags)
        }
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TextIO

import attrs
import httpx
import uvicorn

from servletkit.container.app import build_app
from servletkit.container.config import Config
from servletkit.container.http_server import loop_factory, uvicorn_config
from servletkit.container.runtime import Container
from servletkit.container.snippets import (
    appservice_url,
)
from servletkit.dev.checks import (
    check_synapse_installed,
    choose_homeserver_port,
    choose_policy_port,
    plugin_failures,
    policy_facts,
    require_port,
)
from servletkit.dev.embedded_synapse import (
    SynapseError,
    SynapseServer,
    launch_synapse,
)
from servletkit.dev.errors import DevError, step
from servletkit.dev.extensions import StartedExtension, load_extension
from servletkit.dev.state import DevPaths, DevState, claim_state_folder
from servletkit.dev.terminal import route_logs
from servletkit.dev.watch import PluginWatcher, watched_plugins
from servletkit.dev.wiring import (
    SYNAPSE_LOOPBACK_FEDERATION,
    ping_appservice,
    synapse_wiring,
    wired_config,
)
from servletkit.files import write_private

log = logging.getLogger("servletkit.dev")

RUN_FILE_VERSION: Final = 1
SYNAPSE_START_TIMEOUT_S: Final = 60.0


# -- running ---------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: :class:`DevSession` stops it."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


class DevSession:
    """One run of ``servletkit dev``: start everything, report, wait for a signal, stop.

    ``extensions`` names the dev extensions to start beside Synapse
    (:mod:`servletkit.dev.extensions`, e.g. ``xmpp`` for ``--xmpp``).
    """

    def __init__(self, config: Config, out: TextIO = sys.stdout,
                 extensions: tuple[str, ...] = ()) -> None:
        self.config = config
        self.extension_names = extensions
        self.extensions: dict[str, StartedExtension] = {}  # the started ones
        self.paths = DevPaths.for_config(config)
        self.out = out
        self.synapse: SynapseServer | None = None
        self._server: _Server | None = None
        self._serving: asyncio.Task[None] | None = None
        self._synapse_answers = asyncio.Event()
        self._lock: TextIO | None = None  # set once this session owns the state folder
        self._watching: asyncio.Task[None] | None = None
        self._container: Container | None = None

    @property
    def state_folder_fix(self) -> str:
        """What to do when the state folder cannot be written."""
        return (f"make {self.paths.root} a writable folder, or set another [dev] state_dir "
                f"in {self.config.path}")

    def say(self, message: str) -> None:
        """One line of progress for the user."""
        print(f"servletkit dev: {message}", file=self.out, flush=True)

    async def run(self) -> int:
        """Start, wait for SIGINT or SIGTERM, stop; return the exit status.

        0 when stopped after a complete start; ``128 + signal`` (130 for Ctrl-C,
        143 for SIGTERM) when the signal cut the start short, as a shell reports it.
        """
        stop = asyncio.Event()
        received: list[int] = []

        def on_signal(signum: int) -> None:
            received.append(signum)
            stop.set()

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        starting = asyncio.create_task(self.start())
        stopping = asyncio.create_task(stop.wait())
        status = 0
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # raises what went wrong
                self.print_summary(json.loads(self.paths.run_file.read_text()))
                self.watch_plugins()
                await self.until_stopped(stopping)
                self.say("stopping…")
            else:
                status = 128 + received[0]
                self.say(f"interrupted ({signal.Signals(received[0]).name}) while starting; "
                         f"stopping…")
        finally:
            starting.cancel()
            stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
            await self.stop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
        self.say("stopped")
        return status

    async def until_stopped(self, stopping: asyncio.Task[Any]) -> None:
        """Wait for the stop signal; raise :class:`DevError` if Synapse or the container ends."""
        assert self.synapse is not None and self._serving is not None  # start() set them
        synapse = self.synapse.process
        assert synapse is not None  # launch_synapse spawned it
        while not stopping.done():
            status = synapse.poll()
            if status is not None:
                raise DevError(f"Synapse exited on its own (status {status}); "
                               f"see {self.paths.synapse_log}")
            if self._serving.done():
                raise DevError(f"the container stopped on its own; see "
                               f"{self.paths.container_log}")
            await asyncio.wait({stopping}, timeout=0.25)

    async def start(self) -> None:
        """Claim the state folder; start the container, then Synapse; create the test
        account; write ``dev.json``. Nothing in the folder changes until it is claimed."""
        config, paths = self.config, self.paths
        check_synapse_installed()
        with step(f"writing the state folder {paths.root}", self.state_folder_fix):
            # it holds secrets, access tokens and Synapse's signing key: owner only
            paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock = claim_state_folder(paths)
            paths.root.chmod(0o700)
            paths.run_file.unlink(missing_ok=True)  # left by a run that was killed
            state = DevState.load(paths.state)
            port = choose_homeserver_port(config, state)
            policy_port = choose_policy_port(config, state)
            if (port, policy_port) != (state.homeserver_port, state.policy_port):
                state = attrs.evolve(state, homeserver_port=port, policy_port=policy_port)
            state.save(paths.state)
        homeserver_url = f"http://127.0.0.1:{port}"
        config = wired_config(config, state, paths, homeserver_url)
        for name in self.extension_names:
            config = self.start_extension(name, config)

        self.say(f"loading plugins ({config.path})…")
        container = Container(config)
        container.load()
        if failure := plugin_failures(container):
            raise failure
        require_port(config, config.server.host, config.server.port, "[server] port")
        require_port(config, config.module.host, config.module.port, "[module] port")
        if config.policy is not None:
            require_port(config, config.policy.host, config.policy.port, "[policy] port")
        self.say(f"starting the container on {config.server.host}:{config.server.port}…")
        await self.serve_container(container)

        first = not (paths.synapse / "homeserver.db").exists()
        self.say(f"starting Synapse on {homeserver_url} "
                 + ("(first start: creating its database, a few seconds)…" if first
                    else f"(state in {paths.synapse})…"))
        with step("starting Synapse", f"see {paths.synapse_log}"):
            self.synapse = launch_synapse(
                paths.synapse, port=port, server_name=config.homeserver.server_name,
                extra_config={
                    **synapse_wiring(config, paths),
                    **SYNAPSE_LOOPBACK_FEDERATION,
                    "registration_shared_secret": state.registration_shared_secret,
                    "macaroon_secret_key": state.macaroon_secret_key,
                    "form_secret": state.form_secret,
                },
                die_with_parent=True,
            )
            await self.wait_for_synapse(self.synapse)
        # the plugins' servlet_init runs now, once Synapse's module has connected (at
        # most 2 s), so that their own homeserver calls are answered
        self._synapse_answers.set()
        await self.wait_for_plugins(container)
        if failure := plugin_failures(container):
            raise failure

        with step(f"setting up the test account {config.dev.test_user!r}",
                  f"see {paths.synapse_log}"):
            user_id = await self.ensure_test_account(homeserver_url, state.test_password)
        self.say("checking that Synapse reaches the container (appservice ping)…")
        with step("the appservice ping", f"see {paths.synapse_log} and {paths.container_log}"):
            await ping_appservice(config)

        with step(f"writing {paths.run_file}", self.state_folder_fix):
            self.write_run_file(homeserver_url, user_id, state, container)

    def start_extension(self, name: str, config: Config) -> Config:
        """Start the dev extension ``name`` for ``config``; the config it returns."""
        extension = load_extension(name)
        folder = self.paths.root / name
        self.say(f"starting the dev extension {name} (state in {folder})…")
        try:
            started = extension(config, folder)
        except DevError:
            raise
        except Exception as exc:
            raise DevError(f"the dev extension {name!r} did not start: {exc}") from None
        self.extensions[name] = started
        return started.config

    def write_run_file(
        self, homeserver_url: str, user_id: str, state: DevState, container: Container
    ) -> None:
        """Write ``dev.json``: the facts a client or script needs (format in the module doc)."""
        config, paths = container.config, self.paths
        assert self.synapse is not None and self.synapse.process is not None  # start() did
        write_private(paths.run_file, json.dumps({
            "version": RUN_FILE_VERSION,
            "homeserver_url": homeserver_url,
            "container_url": appservice_url(config),
            "module_wire": f"{config.module.host}:{config.module.port}",
            "policy_server": policy_facts(config),
            "server_name": config.homeserver.server_name,
            "test_user": {"user_id": user_id, "localpart": config.dev.test_user,
                          "password": state.test_password},
            "plugins": {status.name: list(status.hooks)
                        for status in container.statuses() if status.live},
            "logs": {"servletkit": str(paths.container_log), "synapse": str(paths.synapse_log)},
            "pids": {"servletkit": os.getpid(), "synapse": self.synapse.process.pid},
            "extensions": {name: dict(started.facts)
                           for name, started in self.extensions.items()},
        }, indent=2))

    def watch_plugins(self) -> None:
        """Reload a plugin installed in editable mode when its source changes (one line
        each, :mod:`servletkit.dev.watch`)."""
        assert self._container is not None  # start() set it
        watched = watched_plugins(self._container)
        if not watched:
            return
        names = ", ".join(plugin.name for plugin in watched)
        self.say(f"watching the source of {names} (editable installs): saving a file "
                 f"reloads its plugin")
        self._watching = asyncio.create_task(PluginWatcher(self._container, self.say).run())

    async def serve_container(self, container: Container) -> None:
        """Serve the container's app (in this process) and wait until it listens.

        Its plugins start once Synapse answers and its module connects
        (:meth:`wait_for_plugins`).
        """
        config = container.config
        self._container = container
        app = build_app(container, homeserver_started=self._synapse_answers)
        self._server = _Server(uvicorn_config(
            container, app, host=config.server.host, port=config.server.port,
            log_config=None))
        self._serving = asyncio.create_task(self._server.serve())
        await self._until(lambda: self._server is not None and self._server.started)

    async def wait_for_plugins(self, container: Container) -> None:
        """Wait until every plugin has run its ``servlet_init``."""
        await self._until(container.ready.is_set)

    async def _until(self, done: Callable[[], bool]) -> None:
        """Poll ``done`` while the container serves; :class:`DevError` if it stops."""
        assert self._serving is not None  # serve_container started it
        while not done():
            if self._serving.done():
                # uvicorn logs the reason and exits; the log has it
                with contextlib.suppress(BaseException):
                    self._serving.result()
                raise DevError(f"the container did not start; see {self.paths.container_log}")
            await asyncio.sleep(0.02)

    async def wait_for_synapse(self, synapse: SynapseServer) -> None:
        """Poll until Synapse answers, or fail with the tail of its log."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SYNAPSE_START_TIMEOUT_S
        try:
            while not await asyncio.to_thread(synapse.answers):
                if loop.time() > deadline:
                    raise DevError(f"Synapse did not answer within {SYNAPSE_START_TIMEOUT_S:g} s; "
                                   f"see {self.paths.synapse_log}")
                await asyncio.sleep(0.05)
        except SynapseError as exc:
            raise DevError(f"{exc}\nfix the homeserver configuration, or delete "
                           f"{self.paths.synapse} to start with a fresh homeserver") from None

    async def ensure_test_account(self, homeserver_url: str, password: str) -> str:
        """Register the test account unless it exists, then log it in; return its user ID.

        The login also proves the module wire works: Synapse asks the container
        (``check_login_for_spam``, which fails closed) before it lets anyone in.
        """
        localpart = self.config.dev.test_user
        async with httpx.AsyncClient(base_url=homeserver_url, timeout=30) as client:
            response = await client.post("/_matrix/client/v3/register", json={
                "username": localpart, "password": password,
                "auth": {"type": "m.login.dummy"}, "inhibit_login": True,
            })
            if response.status_code == 200:
                self.say(f"created the test account {response.json()['user_id']}")
            elif response.json().get("errcode") != "M_USER_IN_USE":
                raise DevError(f"could not create the test account {localpart!r}: "
                               f"{response.status_code} {response.text}")
            self.say(f"logging in as {localpart} (Synapse asks the container first)…")
            response = await client.post("/_matrix/client/v3/login", json={
                "type": "m.login.password", "password": password,
                "identifier": {"type": "m.id.user", "user": localpart},
            })
            if response.status_code == 403 and response.json().get("errcode") == "M_FORBIDDEN":
                raise DevError(
                    f"the test account {localpart!r} cannot log in: "
                    f"{response.json().get('error')}; if a plugin refused it, fix the plugin; "
                    f"if the password differs from {self.paths.state}, set [dev] test_user to "
                    f"another name or delete {self.paths.root} to start afresh")
            if response.status_code != 200:
                raise DevError(
                    f"logging in the test account failed: {response.status_code} "
                    f"{response.text}; Synapse's servletkit module may not reach the container's "
                    f"module wire on {self.config.module.host}:{self.config.module.port} "
                    f"(see {self.paths.synapse_log})")
            body = response.json()
            await client.post("/_matrix/client/v3/logout",
                              headers={"Authorization": f"Bearer {body['access_token']}"})
            return str(body["user_id"])

    def print_summary(self, facts: dict[str, Any]) -> None:
        """The short block that tells a newcomer what to do next."""
        user = facts["test_user"]
        width = max((len(name) for name in facts["plugins"]), default=0)
        plugins = [f"{name.ljust(width)}  {', '.join(hooks) or '(no hooks)'}"
                   for name, hooks in facts["plugins"].items()] or [
                       "none enabled (install a plugin package, see docs/dev.md)"]
        here = Path.cwd()

        def show(path: str) -> str:
            with contextlib.suppress(ValueError):
                return str(Path(path).relative_to(here))
            return path

        lines = [
            "",
            "servletkit dev is running: a Synapse homeserver whose events go through your plugins.",
            "",
            f"  Homeserver    {facts['homeserver_url']}   (point any Matrix client here)",
            f"  Test account  {user['user_id']}   password {user['password']}",
            f"  Container     {facts['container_url']}   (module wire on {facts['module_wire']})",
            *([f"  Policy server {facts['policy_server']['server_name']}   (protect a room: "
               "servletkit policy protect ROOM_ID)"] if facts.get("policy_server") else []),
            *(f"  {label.ljust(13)} {text}" for started in self.extensions.values()
              for label, text in started.summary),
            f"  Plugins       {plugins[0]}",
            *(f"                {line}" for line in plugins[1:]),
            f"  Logs          {show(facts['logs']['servletkit'])}",
            f"                {show(facts['logs']['synapse'])}",
            f"  For scripts   {show(str(self.paths.run_file))}",
            "",
            "What the plugins log (context.log) appears below; Ctrl-C stops everything.",
            "",
        ]
        print("\n".join(lines), file=self.out, flush=True)

    async def stop(self) -> None:
        """Stop Synapse, then the container; remove ``dev.json``; give up the state folder.

        Safe to call at any stage. A session that never claimed the folder
        (another ``servletkit dev`` owns it) leaves it alone. The folder is
        released last, so a new start never meets this one's Synapse or ports.
        """
        if self._lock is None:
            return
        if self._watching is not None:
            self._watching.cancel()
            with contextlib.suppress(BaseException):
                await self._watching
        try:
            self.paths.run_file.unlink(missing_ok=True)
        except OSError as exc:  # not fatal: the next start removes it
            log.warning("could not remove %s: %s", self.paths.run_file, exc)
        if self.synapse is not None:
            await asyncio.to_thread(self.synapse.stop)
        if self._server is not None and self._serving is not None:
            self._server.should_exit = True
            with contextlib.suppress(BaseException):
                await self._serving
        for name, started in self.extensions.items():
            try:
                await asyncio.to_thread(started.stop)
            except Exception as exc:  # not fatal: say it and stop the rest
                log.warning("could not stop the dev extension %s: %s", name, exc)
        self.extensions = {}
        self._lock.close()
        self._lock = None


def run_dev(config: Config, out: TextIO = sys.stdout, extensions: tuple[str, ...] = ()) -> int:
    """Run ``servletkit dev`` for ``config`` (with the dev ``extensions`` named) until
    SIGINT or SIGTERM; return the exit status."""
    session = DevSession(config, out, extensions)
    with step(f"opening the log file {session.paths.container_log}", session.state_folder_fix):
        undo = route_logs(session.paths.container_log, out, config.logging)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(session.run())
    finally:
        undo()
