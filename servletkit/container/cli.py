"""The ``servletkit`` command line."""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from servletkit.container.config import Config, ConfigError, load_config
from servletkit.container.ports import port_unavailable
from servletkit.container.runtime import Container, PluginStatus
from servletkit.container.snippets import (
    DEFAULT_REGISTRATION_FILE,
    dump_yaml,
    registration,
    synapse_config,
)

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
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    from servletkit.container.http_server import with_header_timeout

    server = config.server
    uvicorn.run(build_app(container), host=host, port=port, log_level="info", lifespan="on",
                log_config=uvicorn_log_config(), timeout_keep_alive=server.keep_alive_s,
                http=with_header_timeout(AutoHTTPProtocol, server.header_timeout_s))
    return 0


class WithoutQueryString(logging.Filter):
    """Drops the query string from uvicorn's access log lines: a homeserver may send its
    hs_token as ``?access_token=``, and tokens are never logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            path, _, _ = args[2].partition("?")
            record.args = (*args[:2], path, *args[3:])
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's logging config, its access log lines without query strings."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["without_query"] = {"()": WithoutQueryString}
    config["handlers"]["access"]["filters"] = ["without_query"]
    return config


def cmd_plugins(args: argparse.Namespace) -> int:
    """Print a table of the plugins: name, distribution and version, hooks, enabled, order.

    Plugins are imported and registered, never started: listing them must not
    open their connections or write their data (``servletkit check`` starts them).
    """
    _, container = _load(args.config)
    print(plugins_table(container))
    return 0


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
        return run_dev(load_config(args.config))
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
    command("dev", cmd_dev, "run a local Synapse wired to the container and its plugins "
            "(state in [dev] state_dir); Ctrl-C stops both")
    command("plugins", cmd_plugins, "list installed plugins, their hooks and state")
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

    policy_arguments(command("policy", cmd_policy, "the policy server (MSC4284): its "
                             "m.room.policy key, joining rooms, the rooms it serves"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``servletkit`` console script."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    if not Path(args.config).exists():
        print(f"servletkit: {args.config}: no such config file "
              f"(pass --config PATH, or create ./{DEFAULT_CONFIG})", file=sys.stderr)
        return 2
    try:
        status: int = args.handler(args)
        return status
    except (ConfigError, CommandError) as exc:
        print(f"servletkit: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
