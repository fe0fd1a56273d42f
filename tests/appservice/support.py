"""Shared helpers of the appservice wire's tests."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from servletkit import hookimpl
from servletkit.container.config import Config, parse_config
from servletkit.testing import only_plugins

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
    return parse_config(
        {
            "appservice": {"as_token": "unit-as-token", "hs_token": HS_TOKEN, **appservice},
            "plugins": only_plugins({name: {} for name in plugins}),
        },
        tmp_path / "servletkit.toml",
    )


class Counts:
    """Intercepts and observes every event (so every item is built), counting them."""

    def __init__(self) -> None:
        self.intercepted = 0
        self.stored = 0

    @hookimpl
    def on_send_event(self, event):
        self.intercepted += 1

    @hookimpl
    def on_stored_event(self, event):
        self.stored += 1
