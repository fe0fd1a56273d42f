"""``servletkit dev --xmpp``: a local Prosody beside the embedded Synapse, ready to chat."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from servletkit_xmpp_gateway.testing import NioUser, XmppUser

from servletkit.testing.dev import DevProcess, write_dev_config
from servletkit.testing.waiting import eventually

pytestmark = pytest.mark.integration
ROOM = "devroom@conference.localhost"


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[DevProcess]:
    """``servletkit dev --xmpp`` running until it is ready; SIGTERM afterwards, which
    must stop its Prosody too."""
    run = DevProcess.start(write_dev_config(tmp_path, {"xmpp_gateway": {}}), timeout=120.0,
                           args=["--xmpp"])
    prosody = int((tmp_path / "state" / "xmpp" / "prosody" / "prosody.pid").read_text())
    try:
        yield run
    finally:
        status = run.stop()
    assert status == 0, run.stdout + run.stderr
    assert not Path(f"/proc/{prosody}").exists()  # Prosody stopped with it


async def test_the_printed_accounts_converse_through_the_gateway(dev: DevProcess) -> None:
    """The printed XMPP account and the dev Matrix account talk in a room on demand."""
    xmpp, user = dev.facts["extensions"]["xmpp"], dev.facts["test_user"]
    assert (f"XMPP account  {xmpp['jid']}   password {xmpp['password']}   server "
            f"127.0.0.1:{xmpp['c2s_port']}") in dev.stdout
    assert dev.facts["plugins"]["xmpp_gateway"]  # the gateway is live
    matrix = await NioUser.login(dev.facts["homeserver_url"], user["localpart"],
                                 user["password"])
    person = XmppUser(f"{xmpp['jid']}/test", xmpp["password"])
    try:
        room_id = await matrix.join("#_xmpp_devroom_conference.localhost:localhost")
        await person.login(xmpp["c2s_port"])
        await person.join(ROOM, "person")
        await eventually(lambda: "dev" in person.occupants(ROOM))
        await matrix.send(room_id, "hello from servletkit dev")
        await person.wait_message(lambda m: m["body"] == "hello from servletkit dev")
        person.say(ROOM, "hello from XMPP")
        await matrix.wait_message(room_id, lambda e: e["content"]["body"] == "hello from XMPP")
    finally:
        await person.logout()
        await matrix.close()
    assert os.stat(dev.run_file).st_mode & 0o077 == 0  # dev.json holds the XMPP password
