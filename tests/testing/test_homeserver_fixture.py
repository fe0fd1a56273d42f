"""The pytest plugin's ``servletkit_homeserver``: a real Synapse wired to the container."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def servletkit_dev_plugins() -> Mapping[str, Mapping[str, Any]]:
    return {"word_filter": {"words": ["spam"], "reason": "no spam here"}}


def test_a_message_goes_through_the_plugins(servletkit_homeserver: dict[str, Any]) -> None:
    user = servletkit_homeserver["test_user"]
    with httpx.Client(base_url=servletkit_homeserver["homeserver_url"], timeout=30) as client:
        login = client.post("/_matrix/client/v3/login", json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user["localpart"]},
            "password": user["password"]}).json()
        client.headers["Authorization"] = f"Bearer {login['access_token']}"
        room = client.post("/_matrix/client/v3/createRoom", json={}).json()["room_id"]
        sent = [client.put(f"/_matrix/client/v3/rooms/{room}/send/m.room.message/{n}",
                           json={"msgtype": "m.text", "body": body})
                for n, body in enumerate(["hello", "buy spam"])]
    assert sent[0].status_code == 200, sent[0].text
    assert sent[1].status_code == 403, sent[1].text
    assert sent[1].json()["error"] == "no spam here"
