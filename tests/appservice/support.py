"""Shared helpers of the appservice wire's tests."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from servletkit.container.config import Config, parse_config
from servletkit.container.plugins import installed_plugins

HS_TOKEN = "unit-hs-token"
AUTH = {"Authorization": f"Bearer {HS_TOKEN}"}
_event_ids = itertools.count()


def new_event(room_id: str = "!room:localhost", body: str = "hello", **extra: Any) -> dict:
    """A client-format ``m.room.message`` event with a fresh event id."""
    return {
        "event_id": f"$ev{next(_event_ids)}",
        "room_id": room_id,
        "type": "m.room.message",
        "sender": "@alice:localhost",
        "content": {"msgtype": "m.text", "body": body},
        "origin_server_ts": 1_700_000_000_000,
        "unsigned": {"age": 5},
        "user_id": "@alice:localhost",
        **extra,
    }


def container_config(tmp_path: Path, plugins: Mapping[str, Any], **appservice: Any) -> Config:
    """Config for a container with only ``plugins`` live; installed plugins are disabled."""
    tables: dict[str, Any] = {name: {"enabled": False} for name in installed_plugins()}
    tables.update({name: {} for name in plugins})
    return parse_config(
        {
            "appservice": {"as_token": "unit-as-token", "hs_token": HS_TOKEN, **appservice},
            "plugins": tables,
        },
        tmp_path / "servletkit.toml",
    )
