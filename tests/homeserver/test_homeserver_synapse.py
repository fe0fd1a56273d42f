"""HomeserverClient against a real Synapse: virtual users act, real users see it."""

from __future__ import annotations

import logging
import uuid
from urllib.parse import quote

import httpx
import pytest

from servletkit import hookimpl
from servletkit.container.config import parse_config
from servletkit.container.plugins import PluginSource
from servletkit.container.runtime import Container
from servletkit.hooks.context import PluginContext
from servletkit.wires.appservice.homeserver import HomeserverClient, MatrixRequestError

pytestmark = pytest.mark.integration


async def virtual_user(homeserver: HomeserverClient, name: str) -> HomeserverClient:
    """A freshly registered virtual user in the test namespace."""
    user_id = await homeserver.register(f"_test_{name}_{uuid.uuid4().hex[:6]}")
    return homeserver.as_user(user_id)


async def test_virtual_user_registers_and_sets_profile(homeserver, new_user):
    """A virtual user registers (twice: idempotent), sets name and avatar; a real user sees them."""
    romeo = await virtual_user(homeserver, "romeo")
    assert await homeserver.register(romeo.user_id[1:].split(":")[0]) == romeo.user_id
    assert await romeo.whoami() == romeo.user_id
    avatar = await romeo.upload_media(b"\x89PNG fake", "image/png", "romeo.png")
    await romeo.set_displayname("Romeo (XMPP)")
    await romeo.set_avatar_url(avatar)
    alice = new_user()
    profile = await alice.call("GET", f"/_matrix/client/v3/profile/{quote(romeo.user_id)}")
    assert profile == {"displayname": "Romeo (XMPP)", "avatar_url": avatar}


async def test_virtual_user_joins_sends_and_redacts(homeserver, new_user):
    """Joined to a real user's room, a virtual user's message and state (with ts) reach the
    real user, and its redaction empties the message."""
    alice = new_user()
    romeo = await virtual_user(homeserver, "romeo")
    room_id = await alice.create_room(preset="public_chat", power_level_content_override={
        "users": {romeo.user_id: 50}})
    assert await romeo.join(room_id) == room_id
    message_id = await romeo.send_message(room_id, "hello from romeo", ts=1_600_000_000_000)
    state_id = await romeo.send_state(room_id, "org.example.bridge", romeo.user_id,
                                      {"network": "xmpp"}, ts=1_600_000_001_000)
    seen = {event["event_id"]: event for event in await alice.messages(room_id)}
    assert seen[message_id]["sender"] == romeo.user_id
    assert seen[message_id]["content"] == {"msgtype": "m.text", "body": "hello from romeo"}
    assert seen[message_id]["origin_server_ts"] == 1_600_000_000_000
    assert seen[state_id]["state_key"] == romeo.user_id
    assert seen[state_id]["content"] == {"network": "xmpp"}
    assert seen[state_id]["origin_server_ts"] == 1_600_000_001_000

    redaction_id = await romeo.redact(room_id, message_id, reason="oops")
    seen = {event["event_id"]: event for event in await alice.messages(room_id)}
    assert seen[message_id]["content"] == {}
    assert seen[redaction_id]["redacts"] == message_id
    assert seen[redaction_id]["content"]["reason"] == "oops"


async def test_send_event_txn_id_is_idempotent(homeserver, new_user):
    """Re-sending with the same txn_id gives the same event, stored once."""
    alice = new_user()
    room_id = await alice.create_room(preset="public_chat")
    romeo = await virtual_user(homeserver, "romeo")
    await romeo.join(room_id)
    first = await romeo.send_message(room_id, "once", txn_id="bridge-msg-1")
    again = await romeo.send_message(room_id, "once", txn_id="bridge-msg-1")
    assert first == again
    bodies = [e["content"].get("body") for e in await alice.messages(room_id)]
    assert bodies.count("once") == 1


async def test_room_with_alias_joined_by_real_user(homeserver, new_user):
    """A room created by the bot with an alias in the namespace is joinable by alias."""
    localpart = f"_test_lobby_{uuid.uuid4().hex[:6]}"
    room_id = await homeserver.create_room(alias_localpart=localpart, preset="public_chat",
                                           name="Lobby")
    alice = new_user()
    assert await alice.join(f"#{localpart}:localhost") == room_id
    state = await homeserver.get_state(room_id, "m.room.member", alice.user_id)
    assert state["membership"] == "join"
    everything = await homeserver.get_room_state(room_id)  # a JSON array
    members = {e["state_key"] for e in everything if e["type"] == "m.room.member"}
    assert alice.user_id in members and homeserver.user_id in members


async def test_invite_and_leave(homeserver, new_user):
    """The bot invites a real user into its room; a virtual user joins and leaves."""
    alice = new_user()
    room_id = await homeserver.create_room(preset="private_chat")
    await homeserver.invite(room_id, alice.user_id, reason="welcome")
    assert await alice.join(room_id) == room_id
    romeo = await virtual_user(homeserver, "romeo")
    await homeserver.invite(room_id, romeo.user_id)
    await romeo.join(room_id)
    await romeo.leave(room_id)
    assert (await homeserver.get_state(room_id, "m.room.member", romeo.user_id))[
        "membership"] == "leave"


async def test_media_upload_downloads_back(homeserver, new_user):
    """An upload returns an mxc URI whose bytes a real user (and the client) download back."""
    data = bytes(range(256)) * 40
    uri = await homeserver.upload_media(data, "application/octet-stream", "blob.bin")
    assert uri.startswith("mxc://localhost/")
    alice = new_user()
    downloaded = await alice.call(
        "GET", f"/_matrix/client/v1/media/download/{uri.removeprefix('mxc://')}")
    assert downloaded == data
    assert await homeserver.download_media(uri) == data


async def test_rate_limit_is_retried(homeserver, new_user, caplog):
    """A burst of sends meets Synapse's real 429s; every message still arrives, in order."""
    caplog.set_level(logging.INFO, logger="servletkit.homeserver")
    alice = new_user()
    room_id = await alice.create_room(preset="public_chat")
    romeo = await virtual_user(homeserver, "romeo")
    await romeo.join(room_id)
    for i in range(8):
        await romeo.send_message(room_id, f"burst {i}")
    bodies = [e["content"].get("body") for e in await alice.messages(room_id)
              if e["type"] == "m.room.message"]
    assert bodies == [f"burst {i}" for i in range(8)]
    assert any("rate limited (429)" in record.getMessage() for record in caplog.records)


class TestErrors:
    async def test_join_unknown_alias(self, homeserver):
        """Joining an alias nobody made is 404 M_NOT_FOUND."""
        with pytest.raises(MatrixRequestError) as info:
            await homeserver.join("#_test_nowhere:localhost")
        assert (info.value.status, info.value.errcode) == (404, "M_NOT_FOUND")

    async def test_register_outside_namespace(self, homeserver):
        """Registering a localpart outside the namespace is 400 M_EXCLUSIVE."""
        with pytest.raises(MatrixRequestError) as info:
            await homeserver.register("mallory")
        assert (info.value.status, info.value.errcode) == (400, "M_EXCLUSIVE")

    @pytest.mark.parametrize("user_id", ["@mallory:localhost", "@_test_unregistered:localhost"])
    async def test_masquerade_refused(self, homeserver, user_id):
        """Acting as a user outside the namespace, or not registered, is 403 M_FORBIDDEN."""
        with pytest.raises(MatrixRequestError) as info:
            await homeserver.as_user(user_id).whoami()
        assert (info.value.status, info.value.errcode) == (403, "M_FORBIDDEN")
        assert user_id in info.value.error

    async def test_wrong_token(self, synapse):
        """A wrong as_token is 401 M_UNKNOWN_TOKEN, and the message does not show it."""
        async with HomeserverClient(synapse.url, "not-the-token", "localhost", "x") as client:
            with pytest.raises(MatrixRequestError) as info:
                await client.whoami()
        assert (info.value.status, info.value.errcode) == (401, "M_UNKNOWN_TOKEN")
        assert "not-the-token" not in str(info.value)


class Greeter:
    """A plugin that, on init, makes its virtual user join the configured room and speak."""

    @hookimpl
    async def servlet_init(self, context: PluginContext) -> None:
        hs = context.homeserver
        user = hs.as_user(await hs.register(context.config["localpart"]))
        await user.set_displayname("Greeter")
        await user.join(context.config["room"])
        await user.send_message(context.config["room"], "servlet up")


async def test_plugin_acts_through_context_homeserver(synapse, appservice_section, new_user,
                                                      tmp_path):
    """A plugin loaded by the container acts in a real room through context.homeserver."""
    alice = new_user()
    room_id = await alice.create_room(preset="public_chat")
    localpart = f"_test_greeter_{uuid.uuid4().hex[:6]}"
    config = parse_config({
        "homeserver": {"url": synapse.url, "server_name": "localhost"},
        "appservice": appservice_section,
        "store": {"path": str(tmp_path / "servletkit.db")},
        "plugins": {"greeter": {"localpart": localpart, "room": room_id}},
    })
    container = Container(config, [PluginSource("greeter", obj=Greeter())])
    container.load()
    await container.start()
    await container.stop()
    assert container.errors == []
    [greeting] = [e for e in await alice.messages(room_id) if e["type"] == "m.room.message"]
    assert (greeting["sender"], greeting["content"]["body"]) == (
        f"@{localpart}:localhost", "servlet up")


async def test_connections_are_reused(synapse, appservice_section):
    """Sequential requests by the bot and its virtual users travel over one kept-alive socket."""
    local_ports = []

    async def record(response: httpx.Response) -> None:
        stream = response.extensions["network_stream"]
        local_ports.append(stream.get_extra_info("client_addr")[1])

    async with httpx.AsyncClient(event_hooks={"response": [record]}) as http:
        bot = HomeserverClient(synapse.url, appservice_section["as_token"], "localhost",
                               appservice_section["sender_localpart"], http=http)
        juliet = bot.as_user(await bot.register("_test_juliet"))
        for _ in range(3):
            assert await bot.whoami() == bot.user_id
            assert await juliet.whoami() == juliet.user_id
    assert len(local_ports) == 7
    assert len(set(local_ports)) == 1
