"""Account linking: a Matrix user speaks from their own XMPP account (real Synapse,
real Prosody): linked through the bot's DM and the HTTP form, unlinked again."""

from __future__ import annotations

import asyncio
import base64
import re
import subprocess

import httpx
import pytest
from servletkit_xmpp_gateway.testing import MatrixUser
from slixmpp import JID

from servletkit.testing.waiting import eventually

pytestmark = pytest.mark.integration

ROOM = "linkroom@conference.localhost"
ALIAS = "#_xmpp_linkroom_conference.localhost:localhost"
BOT = "@xmppbot:localhost"
DAVE = "dave@localhost"
PASSWORD = "dave-secret-pass"  # dave's in conftest's XMPP_USERS
WRONG = "not-daves-password-77"


def _real_jid(observer, nick: str) -> str | None:  # type: ignore[no-untyped-def]
    """The real JID of ``nick`` in ROOM as the observer (its owner) sees it."""
    jid = observer.plugin["xep_0045"].get_jid_property(JID(ROOM), nick, "jid")
    return None if jid is None else str(JID(jid).bare)


async def _bot_dm(user: MatrixUser) -> str:
    """A DM of ``user`` with the gateway's bot, once the bot has joined and said hello."""
    dm = str((await user.call("POST", "/createRoom", {
        "preset": "trusted_private_chat", "is_direct": True, "invite": [BOT]}))["room_id"])
    await user.wait_message(dm, lambda e: "!xmpp link" in e["content"]["body"])
    return dm


async def _ask_link(user: MatrixUser, dm: str) -> str:
    """``!xmpp link`` in ``dm``: the link to the form the bot answers with."""
    seen = {e["event_id"] for e in await user.messages(dm)}
    await user.send(dm, "!xmpp link")
    notice = await user.wait_message(dm, lambda e: e["event_id"] not in seen
                                     and "/link/" in e["content"]["body"])
    found = re.search(r"(http\S+/link/\S+)", notice["content"]["body"])
    assert found, notice
    return found[1]


async def test_a_linked_account_speaks_as_its_own_jid(gateway, matrix_user, xmpp_user) -> None:
    """``!xmpp link`` gives a one-time form link; a wrong password links nothing (told in
    the DM); the right one makes the user's messages in the MUC and DMs come from
    dave@localhost, with no second occupant and no echo, and what the account is sent
    1:1 reaches the DM; ``!xmpp unlink`` deletes the password and brings the component's
    occupant back. No password reaches the log."""
    human = await xmpp_user("human")
    await human.join(ROOM, "human")  # first in: the owner, who sees real JIDs
    lina = await matrix_user("Lina")
    room_id = await lina.join(ALIAS)
    await eventually(lambda: "Lina" in human.occupants(ROOM))
    await lina.send(room_id, "before linking")
    await human.wait_message(lambda m: m["body"] == "before linking")
    assert _real_jid(human, "Lina").endswith("@matrix.localhost")

    dm = await _bot_dm(lina)
    url = await _ask_link(lina, dm)
    async with httpx.AsyncClient(timeout=30) as http:
        page = await http.get(url)
        assert page.status_code == 200 and 'type="password"' in page.text
        assert (await http.get(url + "x")).status_code == 403
        refused = await http.post(url, json={"jid": DAVE, "password": WRONG})
        assert refused.status_code == 403 and refused.json()["errcode"] == "M_FORBIDDEN"
        await lina.wait_message(dm, lambda e: "refused the login" in e["content"]["body"])
        again = await http.post(url, json={"jid": DAVE, "password": PASSWORD})
        assert again.status_code == 403  # the link worked once

        url = await _ask_link(lina, dm)
        bad = await http.post(url, data={"jid": "no address", "password": "x"})
        assert bad.status_code == 400 and bad.json()["errcode"] == "M_INVALID_PARAM"
        linked = await http.post(url, data={"jid": DAVE, "password": PASSWORD})
        assert linked.status_code == 200 and linked.json() == {"linked": DAVE}
    await lina.wait_message(dm, lambda e: e["content"]["body"].startswith("Linked: "))

    record = await gateway.plugin_data(f"link/{lina.user_id}")
    assert record["jid"] == DAVE
    stored = base64.b64decode(record["password"])
    assert PASSWORD.encode() not in stored and len(stored) > 40  # sealed

    await eventually(lambda: _real_jid(human, "Lina") == DAVE)
    await lina.send(room_id, "from my own account")
    got = await human.wait_message(lambda m: m["body"] == "from my own account")
    assert got["from"] == f"{ROOM}/Lina" and _real_jid(human, "Lina") == DAVE
    assert not [n for n in human.occupants(ROOM) if n.startswith("Lina")
                and n != "Lina"]  # nobody twice

    human.say(ROOM, "heard you")
    await lina.wait_message(room_id, lambda e: e["content"]["body"] == "heard you")
    bodies = [e["content"]["body"] for e in await lina.messages(room_id)]
    assert bodies.count("from my own account") == 1  # the MUC's echo stayed in XMPP

    bob = await xmpp_user("bob")
    direct = await lina.direct_room("@_xmpp_bob=40localhost:localhost")
    await lina.send(direct, "hi bob, it is Lina")
    dm_got = await bob.wait_message(lambda m: m["body"] == "hi bob, it is Lina")
    assert dm_got["type"] == "chat" and dm_got["from"].bare == DAVE
    bob.tell(DAVE, "hi Lina, from bob")  # to the account: the gateway's session hears it
    answer = await lina.wait_message(direct, lambda e: e["content"]["body"]
                                     == "hi Lina, from bob")
    assert answer["sender"] == "@_xmpp_bob=40localhost:localhost"

    await lina.send(dm, "!xmpp status")
    await lina.wait_message(dm, lambda e: e["content"]["body"]
                            == f"Linked to {DAVE}: connected.")
    await lina.send(dm, "!xmpp unlink")
    await lina.wait_message(dm, lambda e: e["content"]["body"].startswith("Unlinked"))
    assert await gateway.plugin_data(f"link/{lina.user_id}") is None

    await lina.send(room_id, "back through the gateway")
    await human.wait_message(lambda m: m["body"] == "back through the gateway")
    assert _real_jid(human, "Lina").endswith("@matrix.localhost")
    log = gateway.log()
    for secret in (PASSWORD, WRONG):
        assert secret not in log
        assert base64.b64encode(secret.encode()).decode() not in log


async def test_no_link_is_sent_where_others_can_read_it(gateway, matrix_user) -> None:
    """In a room with the bot and someone else, ``!xmpp link`` sends no link (whoever
    had it could link their own account for the user and read what they send)."""
    nia = await matrix_user("Nia")
    omar = await matrix_user("Omar")
    room_id = str((await nia.call("POST", "/createRoom", {
        "preset": "private_chat", "invite": [BOT, omar.user_id]}))["room_id"])
    await omar.join(room_id)
    await nia.wait_message(room_id, lambda e: "!xmpp link" in e["content"]["body"])
    await nia.send(room_id, "!xmpp link")
    await nia.wait_message(room_id, lambda e: "only sent in a room with just you and me"
                           in e["content"]["body"])
    assert not [e for e in await nia.messages(room_id) if "/link/" in e["content"]["body"]]


async def test_a_password_refused_later_falls_back_to_the_gateway(gateway, matrix_user,
                                                                   xmpp_user) -> None:
    """The account's password changes and the XMPP server restarts: the session's login
    is refused, the user is told in the DM, and their messages reach the MUC again
    through the component's occupant (once, under their nick)."""
    room, alias = "relink@conference.localhost", "#_xmpp_relink_conference.localhost:localhost"
    pia = await matrix_user("Pia")
    room_id = await pia.join(alias)
    dm = await _bot_dm(pia)
    async with httpx.AsyncClient(timeout=30) as http:
        linked = await http.post(await _ask_link(pia, dm),
                                 json={"jid": "erin@localhost", "password": "erin-pass-1"})
        assert linked.status_code == 200
    human = await xmpp_user("human")
    await human.join(room, "human")
    await pia.send(room_id, "as erin")
    await human.wait_message(lambda m: m["body"] == "as erin")

    config = str(gateway.prosody.config_path)
    for command in (["deluser", "erin@localhost"], ["register", "erin", "localhost", "new-1"]):
        await asyncio.to_thread(subprocess.run, ["prosodyctl", "--config", config, *command],
                                check=True, capture_output=True, timeout=30)
    await asyncio.to_thread(gateway.prosody.restart)
    await pia.wait_message(dm, lambda e: "refused the login of erin@localhost"
                           in e["content"]["body"], within=30)

    again = await xmpp_user("human")  # the old session died with the server
    await again.join(room, "human")
    await pia.send(room_id, "through the gateway again")
    await again.wait_message(lambda m: m["body"] == "through the gateway again", within=20)
    assert not [n for n in again.occupants(room) if n.startswith("Pia (")]
    await pia.send(dm, "!xmpp status")
    await pia.wait_message(dm, lambda e: "its login was refused" in e["content"]["body"])
