"""The ``servletkit`` command line."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from servletkit.container.admin_client import (
    AdminRefused,
    AdminUnavailable,
    admin_request,
    live_table,
)
from servletkit.container.config import Config, load_config
from servletkit.container.config_tables import ConfigError
from servletkit.container.logs import TEXT_FORMAT
from servletkit.container.ports import port_unavailable
from servletkit.container.runtime import Container
from servletkit.container.scaffold import ScaffoldError, cmd_new
from servletkit.container.scaffold import add_arguments as new_arguments
from servletkit.container.snippets import (
    DEFAULT_REGISTRATION_FILE,
    dump_yaml,
    registration,
    synapse_config,
)
from servletkit.container.versions import PluginStatus

DEFAULT_CONFIG = "servletkit.toml"


class CommandError(Exception):
    """A failure to report in one line (and exit with status 1), never as a traceback."""


def _load(path: str) -> tuple[Config, Container]:
    config = load_config(path)
    container = Container(config)
    container.load()
    return config, container


def cmd_run(args: argparse.Namespace) -> int:
    """Serve the container's ASGI app with uvicorn until interrupted."""
    import uvicorn

    from servletkit.container.app import build_app

    config, container = _load(args.config)
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    listens = [(host, port, "[server] port" if args.port is None else "--port")]
    if config.module.enabled:
        listens.append((config.module.host, config.module.port, "[module] port"))
    if config.policy is not None:
        listens.append((config.policy.host, config.policy.port, "[policy] port"))
    for listen_host, listen_port, setting in listens:
        if taken := port_unavailable(config, listen_host, listen_port, setting):
            raise CommandError(taken)
    from servletkit.container.http_server import uvicorn_config
    from servletkit.container.logs import apply_decisions, run_log_config

    served = uvicorn.Server(uvicorn_config(container, build_app(container), host=host,
                                           port=port, log_config=run_log_config(config.logging)))
    apply_decisions(config.logging)
    # what is loaded by now (modules, plugins, config) lives as long as the process: moved
    # out of the collector's reach, a full collection no longer walks it (measured: 55,000
    # objects, 145-195 ms a full collection on the loaded dev machine, an event-loop stall
    # in every wire; after the freeze, what the requests themselves keep)
    gc.freeze()
    served.run()
    if not served.started:
        raise CommandError("the container did not start: see uvicorn's message above")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    """Print a table of the plugins.

    With a container running for this config: its live state (serving version,
    since when, calls, errors). Otherwise the installed plugins: name,
    distribution and version, hooks, enabled, order; they are imported and
    registered, never started: listing them must not open their connections or
    write their data (``servletkit check`` starts them).
    """
    config = load_config(args.config)
    try:
        print(live_table(admin_request(config, "GET", "/plugins", timeout=2.0)))
        return 0
    except AdminUnavailable:
        pass
    except AdminRefused as exc:
        print(f"servletkit: {exc}; listing the installed plugins instead", file=sys.stderr)
    _, container = _load(args.config)
    print(plugins_table(container))
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    """Ask the running container to reload plugin NAME; print one line; 1 if it failed."""
    config = load_config(args.config)
    try:
        answer = admin_request(config, "POST", f"/plugins/{args.name}/reload")
    except (AdminUnavailable, AdminRefused) as exc:
        raise CommandError(str(exc)) from None
    print(answer["summary"])
    return 0 if answer["ok"] else 1


def plugins_table(container: Container) -> str:
    """The text of ``servletkit plugins``: one row per plugin the container knows."""
    rows = [("NAME", "DISTRIBUTION", "HOOKS", "ENABLED", "ORDER", "STATUS")]
    for status in container.statuses():
        dist = f"{status.distribution} {status.version}" if status.distribution else "-"
        state = "loaded" if status.loaded else "disabled"
        if status.error:
            state = f"FAILED ({status.error.stage}: {status.error.message})"
        rows.append(
            (status.name, dist, ", ".join(status.hooks) or "-",
             "yes" if status.enabled else "no", str(status.order), state)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        + "  " + row[-1]
        for row in rows
    )


def cmd_deploy(args: argparse.Namespace) -> int:
    """Install a plugin distribution into the running container's environment and load its
    plugins there; one line per plugin; 1 if one failed to load."""
    from servletkit.container import pip

    config = load_config(args.config)
    try:
        python = admin_request(config, "GET", "/plugins", timeout=5.0)["python"]
        installed = pip.install(python, args.target, no_deps=args.no_deps,
                                no_build_isolation=args.no_build_isolation)
        if not installed:
            raise CommandError(f"{args.target} is installed already: to load a new version "
                               "of its code, use 'servletkit reload NAME'")
        answer = admin_request(config, "POST", "/deploy", body={"distributions": installed})
    except (AdminUnavailable, AdminRefused, pip.PipFailed) as exc:
        raise CommandError(str(exc)) from None
    results = answer["results"]
    if not results:
        raise CommandError(f"installed {', '.join(installed)}, but it has no servletkit plugin "
                           "(no entry point in the group 'servletkit.plugins')")
    for result in results:
        print(result["summary"])
    return 0 if all(result["ok"] for result in results) else 1


def cmd_undeploy(args: argparse.Namespace) -> int:
    """Drain, destroy and unload plugin NAME in the running container (and with
    ``--uninstall`` remove its distribution from the container's environment)."""
    from servletkit.container import pip

    config = load_config(args.config)
    try:
        python = admin_request(config, "GET", "/plugins", timeout=5.0)["python"]
        answer = admin_request(config, "POST", f"/plugins/{args.name}/unload")
        print(answer["summary"])
        if args.uninstall and answer["distribution"]:
            pip.uninstall(python, answer["distribution"])
            print(f"{args.name}: uninstalled {answer['distribution']}")
            if config.plugin(args.name):
                print(f"{args.name}: remove [plugins.{args.name}] from {config.path}: the "
                      "next start refuses a table for a plugin that is not installed")
    except (AdminUnavailable, AdminRefused, pip.PipFailed) as exc:
        raise CommandError(str(exc)) from None
    return 0 if answer["ok"] else 1


def cmd_check(args: argparse.Namespace) -> int:
    """Validate the config and load and init every enabled plugin; exit 1 on any problem."""
    _, container = _load(args.config)
    statuses = asyncio.run(_inspect(container))
    for error in container.errors:  # its traceback is logged (to stderr) where it happened
        print(f"plugin {error.plugin!r} failed to {error.stage}: {error.message}", file=sys.stderr)
    if container.errors:
        return 1
    live = [status.name for status in statuses if status.live]
    print(f"{args.config}: ok ({len(live)} plugins live: {', '.join(live) or 'none'})")
    return 0


def cmd_registration(args: argparse.Namespace) -> int:
    """Print the appservice registration YAML for the homeserver."""
    print(dump_yaml(registration(load_config(args.config))), end="")
    return 0


def cmd_synapse_config(args: argparse.Namespace) -> int:
    """Print the snippet to add to Synapse's ``homeserver.yaml``."""
    config = load_config(args.config)
    print(dump_yaml(synapse_config(config, config.resolve(args.registration))), end="")
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    """Run an embedded Synapse wired to the container and its plugins until stopped."""
    from servletkit.dev.command import run_dev
    from servletkit.dev.errors import DevError

    try:
        return run_dev(load_config(args.config), extensions=tuple(args.extensions))
    except DevError as exc:
        raise CommandError(str(exc)) from None


def cmd_policy(args: argparse.Namespace) -> int:
    """The policy server: its key, joining rooms, the rooms it serves."""
    from servletkit.container import policy_command

    try:
        if args.policy_command == "protect":
            from servletkit.dev.errors import DevError
            from servletkit.dev.policy import protect

            try:
                print(json.dumps(protect(load_config(args.config), args.room_id), indent=2))
            except DevError as exc:
                raise CommandError(str(exc)) from None
            return 0
        return policy_command.run(args)
    except policy_command.PolicyCommandError as exc:
        raise CommandError(str(exc)) from None


def cmd_store(args: argparse.Namespace) -> int:
    """The store: ``migrate`` moves a deployment's state (servletkit/store/migrate.py)."""
    from servletkit.store.migrate import MigrateError, run

    try:
        return run(args)
    except MigrateError as exc:
        raise CommandError(str(exc)) from None


async def _inspect(container: Container) -> list[PluginStatus]:
    """Start the plugins, note their state, stop them again."""
    await container.start()
    try:
        return container.statuses()
    finally:
        await container.stop()


Command = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="servletkit", description="Servlets for Matrix: host homeserver plugins."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Command, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", default=DEFAULT_CONFIG, metavar="PATH",
                       help=f"the servletkit.toml to use (default: ./{DEFAULT_CONFIG})")
        p.set_defaults(handler=handler)
        return p

    run = command("run", cmd_run, "serve the container (HTTP) with its plugins")
    run.add_argument("--host", help="address to bind (default: [server] host)")
    run.add_argument("--port", type=int, help="port to bind (default: [server] port)")
    dev = command("dev", cmd_dev, "run a local Synapse wired to the container and its "
                  "plugins (state in [dev] state_dir); Ctrl-C stops both")
    dev.set_defaults(extensions=[])
    from servletkit.dev.extensions import available_extensions

    for name, point in sorted(available_extensions().items()):
        dist = point.dist.name if point.dist is not None else point.value
        dev.add_argument(f"--{name}", dest="extensions", action="append_const", const=name,
                         help=f"also start the dev extension {name!r} of {dist} beside Synapse")
    command("plugins", cmd_plugins, "list the plugins: the live state of the running "
            "container, else the installed plugins, their hooks and state")
    reload = command("reload", cmd_reload, "reload a plugin in the running container: its "
                     "new code serves, calls in flight finish on the old")
    reload.add_argument("name", metavar="NAME", help="the plugin's name")
    deploy = command("deploy", cmd_deploy, "install a plugin distribution into the running "
                     "container's environment (pip) and load its plugins, without a restart")
    deploy.add_argument("target", metavar="PATH_OR_REQUIREMENT",
                        help="a project folder, a wheel, or a requirement such as quiet-room")
    deploy.add_argument("--no-deps", action="store_true", help="pip --no-deps")
    deploy.add_argument("--no-build-isolation", action="store_true",
                        help="pip --no-build-isolation (build with what is installed)")
    undeploy = command("undeploy", cmd_undeploy, "drain, destroy and unload a plugin in the "
                       "running container")
    undeploy.add_argument("name", metavar="NAME", help="the plugin's name")
    undeploy.add_argument("--uninstall", action="store_true",
                          help="also uninstall its distribution (pip uninstall)")
    command("check", cmd_check, "validate the config and plugin loading")
    command("registration", cmd_registration,
            "print the appservice registration YAML for the homeserver")
    synapse = command("synapse-config", cmd_synapse_config,
                      "print the snippet to add to Synapse's homeserver.yaml")
    synapse.add_argument(
        "--registration", default=DEFAULT_REGISTRATION_FILE, metavar="PATH",
        help="where the output of 'servletkit registration' is saved, relative to the "
             f"config (default: {DEFAULT_REGISTRATION_FILE})",
    )
    from servletkit.container.policy_command import add_arguments as policy_arguments

    new = sub.add_parser("new", help="scaffold a plugin distribution with tests",
                         description="scaffold a plugin distribution: pyproject.toml, the "
                         "package with the chosen hooks, tests and a README")
    new_arguments(new)
    new.set_defaults(handler=cmd_new, config=None)
    policy_arguments(command("policy", cmd_policy, "the policy server (MSC4284): its "
                             "m.room.policy key, joining rooms, the rooms it serves"))
    from servletkit.store.migrate import add_arguments as store_arguments

    store_arguments(command("store", cmd_store, "the store: migrate it to another one"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``servletkit`` console script."""
    logging.basicConfig(level=logging.INFO, format=TEXT_FORMAT)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per admin API request
    args = build_parser().parse_args(argv)
    if args.config is not None and not Path(args.config).exists():
        print(f"servletkit: {args.config}: no such config file "
              f"(pass --config PATH, or create ./{DEFAULT_CONFIG})", file=sys.stderr)
        return 2
    try:
        status: int = args.handler(args)
        return status
    except (ConfigError, CommandError, ScaffoldError) as exc:
        print(f"servletkit: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
