"""``servletkit policy``: the policy server's key, joining rooms, the rooms it serves."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from servletkit.container.config import Config, PolicyConfig, load_config
from servletkit.store.factory import store_from_config
from servletkit.wires.policy.federation import FederationClient, FederationError
from servletkit.wires.policy.join import PolicyPeer, policy_user, server_info
from servletkit.wires.policy.keys import KeyFileError, PolicyKeys, load_keys
from servletkit.wires.policy.rooms import Room, Rooms


class PolicyCommandError(Exception):
    """A failure of a ``servletkit policy`` command, reported in one line."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``policy`` subcommands: ``key``, ``join ROOM_ID --via HOMESERVER``, ``rooms``."""
    sub = parser.add_subparsers(dest="policy_command", required=True, metavar="ACTION")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        # also after the action (`policy key --config PATH`); the default is policy's own
        p.add_argument("--config", default=argparse.SUPPRESS, metavar="PATH",
                       help="the servletkit.toml to use")
        return p

    action("key", "print the m.room.policy state content (JSON) for a room")
    join = action("join", "join a room over federation as the policy user")
    join.add_argument("room_id", metavar="ROOM_ID")
    join.add_argument("--via", required=True, metavar="HOMESERVER",
                      help="a server in the room: its server name, or its base URL "
                           "(e.g. http://127.0.0.1:8008 for a loopback setup)")
    action("rooms", "list the rooms the policy server serves")
    protect = action("protect", "servletkit dev: make its policy server protect a room "
                     "(sets m.room.policy as the test account, then joins)")
    protect.add_argument("room_id", metavar="ROOM_ID")


def run(args: argparse.Namespace) -> int:
    """Run the ``policy`` subcommand ``args.policy_command``."""
    config = load_config(args.config)
    settings = _settings(config)
    state_dir = config.resolve(settings.state_dir)
    try:
        keys = load_keys(state_dir)
    except KeyFileError as exc:
        raise PolicyCommandError(str(exc)) from None
    if args.policy_command == "key":
        print(json.dumps(policy_state(settings, keys), indent=2))
    elif args.policy_command == "rooms":
        print(rooms_table(asyncio.run(_all_rooms(config, state_dir))))
    else:
        room, policy = asyncio.run(_join(config, settings, keys, args.room_id, args.via))
        print(json.dumps({"room_id": room.room_id, "room_version": room.room_version,
                          "joined_as": policy_user(settings.server_name), "via": room.via,
                          "policy_state": policy}, indent=2))
        expected = policy_state(settings, keys)
        if policy is None or dict(policy) != expected:
            print("warning: the room's m.room.policy state does not name this policy server "
                  f"yet; homeservers consult it once a room admin sets {json.dumps(expected)} "
                  "(`servletkit policy key`)", file=sys.stderr)
    return 0


def _settings(config: Config) -> PolicyConfig:
    if config.policy is None:
        raise PolicyCommandError(f"{config.path}: no [policy] section; add one with at least "
                                 'server_name = "policy.example.org" to run a policy server')
    return config.policy


def policy_state(settings: PolicyConfig, keys: PolicyKeys) -> dict[str, Any]:
    """The ``m.room.policy`` state content that names this policy server."""
    return server_info(settings.server_name, keys).state_content()


@contextlib.asynccontextmanager
async def _rooms(config: Config, state_dir: Path) -> AsyncIterator[Rooms]:
    """The rooms in the store ``config`` names (opened, a ``rooms.json`` imported)."""
    store = store_from_config(config)
    await store.open()
    try:
        rooms = Rooms(store, state_dir)
        await rooms.open()
        yield rooms
    finally:
        await store.close()


async def _all_rooms(config: Config, state_dir: Path) -> list[Room]:
    async with _rooms(config, state_dir) as rooms:
        return await rooms.all()


def rooms_table(rooms: list[Room]) -> str:
    """The text of ``servletkit policy rooms``."""
    rows = [("ROOM", "VERSION", "MEMBERSHIP", "VIA")]
    rows += [(r.room_id, r.room_version, r.membership, r.via) for r in rooms]
    if len(rows) == 1:
        return "no rooms yet (servletkit policy join ROOM_ID --via HOMESERVER)"
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
                     + "  " + row[3] for row in rows)


async def _join(config: Config, settings: PolicyConfig, keys: PolicyKeys, room_id: str,
                via: str) -> tuple[Any, Mapping[str, Any] | None]:
    state_dir = config.resolve(settings.state_dir)
    async with httpx.AsyncClient() as http, _rooms(config, state_dir) as rooms:
        client = FederationClient(settings.server_name, keys.federation, http,
                                  settings.server_urls)
        base_url = via.rstrip("/") if via.startswith(("http://", "https://")) else None
        try:
            server_name = await _server_name(http, base_url) if base_url else via
            return await PolicyPeer(client, keys, rooms).join(room_id, server_name, base_url)
        except FederationError as exc:
            raise PolicyCommandError(f"cannot join {room_id} via {via}: {exc}") from None


async def _server_name(http: httpx.AsyncClient, base_url: str) -> str:
    """The server name of the homeserver at ``base_url`` (from its published keys)."""
    try:
        answer = (await http.get(f"{base_url}/_matrix/key/v2/server", timeout=10)).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise FederationError(f"{base_url}/_matrix/key/v2/server: {exc}") from None
    name = answer.get("server_name") if isinstance(answer, Mapping) else None
    if not isinstance(name, str):
        raise FederationError(f"{base_url} does not say its server name")
    return name
