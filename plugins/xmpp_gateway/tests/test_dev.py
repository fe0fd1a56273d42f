"""``python -m servletkit_xmpp_gateway.dev``: servletkit dev with a Prosody, ready to chat."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servletkit_xmpp_gateway.testing import MatrixUser, XmppUser

from servletkit.testing.waiting import eventually

pytestmark = pytest.mark.integration
ROOM = "devroom@conference.localhost"


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The dev command running until it is ready; its printed output, dev.json, xmpp.json.
    Stopped with SIGINT (Ctrl-C) afterwards, which must stop Prosody too."""
    state = tmp_path / "xmpp"
    log = tmp_path / "out.log"
    with open(log, "wb") as output:
        child = subprocess.Popen([sys.executable, "-m", "servletkit_xmpp_gateway.dev",
                                  "--state-dir", str(state)], stdout=output,
                                 stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while not (state / "dev" / "dev.json").exists():
            assert child.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "servletkit dev did not become ready"
            time.sleep(0.1)
        yield {"printed": log.read_text(),
               "dev": json.loads((state / "dev" / "dev.json").read_text()),
               "xmpp": json.loads((state / "xmpp.json").read_text())}
    finally:
        child.send_signal(signal.SIGINT)
        code = child.wait(30)
    assert code in (0, 130), log.read_text()
    assert not (state / "prosody" / "prosody.pid").exists()  # Prosody stopped cleanly


async def test_the_printed_accounts_converse_through_the_gateway(dev: dict[str, Any]) -> None:
    """The printed XMPP account and the dev Matrix account talk in a room on demand."""
    xmpp, facts = dev["xmpp"], dev["dev"]
    assert f"XMPP account  {xmpp['jid']}   password {xmpp['password']}" in dev["printed"]
    async with httpx.AsyncClient(base_url=facts["homeserver_url"], timeout=30) as http:
        login = (await http.post("/_matrix/client/v3/login", json={
            "type": "m.login.password", "password": facts["test_user"]["password"],
            "identifier": {"type": "m.id.user", "user": facts["test_user"]["localpart"]},
        })).json()
        http.headers["Authorization"] = f"Bearer {login['access_token']}"
        matrix = MatrixUser(http, facts["test_user"]["user_id"])
        room_id = await matrix.join("#_xmpp_devroom_conference.localhost:localhost")
        person = XmppUser(f"{xmpp['jid']}/test", xmpp["password"])
        await person.login(xmpp["c2s_port"])
        try:
            await person.join(ROOM, "person")
            await eventually(lambda: "dev" in person.occupants(ROOM))
            await matrix.send(room_id, "hello from servletkit dev")
            await person.wait_message(lambda m: m["body"] == "hello from servletkit dev")
            person.say(ROOM, "hello from XMPP")
            await matrix.wait_message(room_id, lambda e: e["content"]["body"]
                                      == "hello from XMPP")
        finally:
            await person.logout()
