"""The plugin against a real Synapse, on each wire.

Module wire (``servletkit dev``: Synapse asks before storing): every content rule, and
join waves (users registered on its Synapse joining a public room).
Policy wire and appservice wire (one Synapse, no module wire, so those wires alone
decide): a ban list followed from a list room, and a word rule; the appservice wire
redacts after the fact (``enforce_vetoes = "redact"``).
The ban list on the module wire: the same deployment with the module wire on too, since
the list room must exist before the container starts (the plugin follows it from
``servlet_init``), which ``servletkit dev`` does not allow.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs
import httpx
import pytest

from servletkit.dev.embedded_synapse import free_port
from servletkit.synapse.settings import DEFAULT_POLICIES
from servletkit.testing import only_plugins, plugins_toml
from servletkit.testing.dev import DevProcess
from servletkit.testing.synapse import register_user
from servletkit.testing.waiting import eventually
from tests.policy.deployment import Client, PolicyDeployment

pytestmark = pytest.mark.integration

WORD = "frobnicate"
AS_TOKEN = "policy-plugin-as-token"
BOT = "@servletkit:localhost"
JOINS, JOIN_WAVE_SECONDS = 3, 4  # a short window, so that the test can wait it out
RULES = {"blocked_words": [WORD], "max_mentions": 2, "flood_messages": 3,
         "flood_seconds": 60, "max_event_bytes": 4000, "blocked_link_domains": ["evil.example"],
         "media_first_message": True, "join_wave_joins": JOINS,
         "join_wave_seconds": JOIN_WAVE_SECONDS}


class DevUser:
    """A user of the ``servletkit dev`` Synapse, over the client-server API."""

    def __init__(self, homeserver_url: str, access_token: str) -> None:
        self.homeserver_url = homeserver_url
        self.http = httpx.Client(base_url=homeserver_url, timeout=30,
                                 headers={"Authorization": f"Bearer {access_token}"})

    @classmethod
    def test_user(cls, facts: dict[str, Any]) -> DevUser:
        """The ``servletkit dev`` test user, logged in."""
        user = facts["test_user"]
        login = httpx.post(f"{facts['homeserver_url']}/_matrix/client/v3/login", json={
            "type": "m.login.password", "password": user["password"],
            "identifier": {"type": "m.id.user", "user": user["localpart"]}}, timeout=30)
        assert login.status_code == 200, login.text
        return cls(facts["homeserver_url"], login.json()["access_token"])

    def another(self, prefix: str) -> DevUser:
        """A new user of the same Synapse (localpart ``prefix`` and a random tail)."""
        account = register_user(self.homeserver_url, f"{prefix}{uuid.uuid4().hex[:8]}")
        return DevUser(self.homeserver_url, account["access_token"])

    def room(self, preset: str = "private_chat") -> str:
        created = self.http.post("/_matrix/client/v3/createRoom", json={"preset": preset})
        assert created.status_code == 200, created.text
        return str(created.json()["room_id"])

    def join(self, room_id: str) -> httpx.Response:
        return self.http.post(f"/_matrix/client/v3/join/{quote(room_id)}", json={})

    def send(self, room_id: str, content: dict[str, Any]) -> httpx.Response:
        return self.http.put(f"/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.message/"
                             f"{uuid.uuid4().hex}", json=content)


@pytest.fixture(scope="module")
def dev_user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevUser]:
    """``servletkit dev`` running the plugin with every content rule on."""
    folder = tmp_path_factory.mktemp("policy-dev")
    config = folder / "servletkit.toml"
    config.write_text(f"[server]\nport = {free_port()}\n[module]\nport = {free_port()}\n"
                      '[dev]\nstate_dir = "state"\n'
                      + plugins_toml(only_plugins({"policy_server": RULES})))
    run = DevProcess.start(config, timeout=120.0)
    user = DevUser.test_user(run.facts)
    try:
        yield user
    finally:
        user.http.close()
        run.stop()


def refused(response: httpx.Response, rule: str) -> str:
    """The refusal's reason, checked to come from ``rule``."""
    assert response.status_code == 403, response.text
    assert response.json()["errcode"] == "M_FORBIDDEN"
    reason = str(response.json()["error"])
    assert reason.startswith(f"{rule}: "), reason
    return reason


def text(body: str) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body}


def test_module_wire_blocked_words(dev_user: DevUser) -> None:
    """A blocked word is refused before storage with the rule's reason; clean text is not."""
    room_id = dev_user.room()
    assert WORD.upper() in refused(dev_user.send(room_id, text(f"I {WORD.upper()} it")),
                                   "blocked_words")
    assert dev_user.send(room_id, text("all fine")).status_code == 200


def test_module_wire_max_mentions(dev_user: DevUser) -> None:
    """Three distinct users over a limit of two is refused."""
    room_id = dev_user.room()
    reason = refused(dev_user.send(room_id, text("@a:localhost @b:localhost @c:localhost")),
                     "max_mentions")
    assert "3 users" in reason
    assert dev_user.send(room_id, text("@a:localhost @b:localhost")).status_code == 200


def test_module_wire_flood(dev_user: DevUser) -> None:
    """The fourth message within a minute is refused, in another room it is not."""
    room_id, other = dev_user.room(), dev_user.room()
    for n in range(3):
        assert dev_user.send(room_id, text(f"message {n}")).status_code == 200
    assert "sent 4 messages" in refused(dev_user.send(room_id, text("one more")), "flood")
    assert dev_user.send(other, text("elsewhere")).status_code == 200


def test_module_wire_event_size(dev_user: DevUser) -> None:
    """An event over max_event_bytes is refused."""
    room_id = dev_user.room()
    refused(dev_user.send(room_id, text("x" * 5000)), "event_size")


def test_module_wire_join_wave(dev_user: DevUser) -> None:
    """In a public room the joins past ``join_wave_joins`` within ``join_wave_seconds`` are
    refused with the rule's reason (the creator's own join is the first of the wave, and a
    refused join counts too, so a raid that keeps trying stays out); once the window has
    passed, a join works again. Another room is not affected."""
    raiders = [dev_user.another("raider") for _ in range(JOINS + 1)]
    try:
        room_id, other = dev_user.room("public_chat"), dev_user.room("public_chat")
        for raider in raiders[:JOINS - 1]:
            joined = raider.join(room_id)
            assert joined.status_code == 200, joined.text
        reason = refused(raiders[JOINS - 1].join(room_id), "join_wave")
        assert reason == (f"join_wave: {JOINS + 1} joins in {JOIN_WAVE_SECONDS} s "
                          f"(at most {JOINS}): a join wave")
        refused(raiders[JOINS].join(room_id), "join_wave")
        assert raiders[JOINS].join(other).status_code == 200
        time.sleep(JOIN_WAVE_SECONDS)
        joined = raiders[JOINS - 1].join(room_id)
        assert joined.status_code == 200, joined.text
    finally:
        for raider in raiders:
            raider.http.close()


@attrs.frozen
class Wires:
    """The deployment, the moderator, the list room ``#bans:localhost`` the plugin follows
    and the management room (both with the bot at power 100)."""

    deployment: PolicyDeployment
    moderator: Client
    list_room: str
    management_room: str

    def ban(self, key: str, glob: str) -> None:
        """Put an ``m.policy.rule.user`` ban of ``glob`` into the list room."""
        response = self.moderator.call(
            "PUT", f"/rooms/{quote(self.list_room)}/state/m.policy.rule.user/{key}",
            {"entity": glob, "recommendation": "m.ban", "reason": "spam"})
        assert response.status_code == 200, response.text


def test_module_wire_links(dev_user: DevUser) -> None:
    """A link to a blocked domain's subdomain is refused; another link is not."""
    room_id = dev_user.room()
    refused(dev_user.send(room_id, text("go to https://shop.evil.example/now")), "links")
    assert dev_user.send(room_id, text("see https://matrix.org")).status_code == 200


def test_module_wire_media_first(dev_user: DevUser) -> None:
    """An image as the first message in a room is refused; after a text message it is not."""
    room_id = dev_user.room()
    image = {"msgtype": "m.image", "body": "cat.png", "url": "mxc://localhost/cat"}
    refused(dev_user.send(room_id, image), "media_first")
    assert dev_user.send(room_id, text("hi, here is my cat")).status_code == 200
    assert dev_user.send(room_id, image).status_code == 200


@contextmanager
def running_wires(folder: Path, extra: str = "") -> Iterator[Wires]:
    """One Synapse with the appservice wire (redacting) to the container, the plugin
    following ``#bans``, which bans ``@troll*`` before the container starts; ``extra`` is
    more of the container's TOML (another wire)."""
    deployment = PolicyDeployment(
        folder,
        plugins={"policy_server": {"blocked_words": [WORD], "policy_lists": ["#bans:localhost"],
                                   "management_room": "#policy-mods:localhost"}},
        extra=f'[appservice]\nas_token = "{AS_TOKEN}"\nhs_token = "policy-plugin-hs-token"\n'
              'enforce_vetoes = "redact"\n[[appservice.namespaces.rooms]]\nregex = ".*"\n'
              + extra)
    try:
        deployment.start_synapse()
        moderator = Client(deployment, "mod")
        rooms = []
        for alias, preset in (("bans", "public_chat"), ("policy-mods", "private_chat")):
            created = moderator.call("POST", "/createRoom", {
                "preset": preset, "room_alias_name": alias, "invite": [BOT],
                "power_level_content_override": {"users": {BOT: 100}}})
            assert created.status_code == 200, created.text
            rooms.append(created.json()["room_id"])
        wires = Wires(deployment, moderator, *rooms)
        wires.ban("trolls", "@troll*:localhost")
        deployment.start_container()
        yield wires
        moderator.close()
    finally:
        deployment.stop()


@pytest.fixture(scope="module")
def wires(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wires]:
    """Policy wire (protected rooms) and appservice wire, no module wire, so those wires
    alone decide."""
    with running_wires(tmp_path_factory.mktemp("policy-wires")) as running:
        yield running


def joined(client: Client, room_id: str) -> httpx.Response:
    return client.call("POST", f"/join/{quote(room_id)}", {})


@pytest.fixture(scope="module")
def protected(wires: Wires) -> str:
    """A public room whose policy server is the container (as tests/policy protects one)."""
    room_id = wires.moderator.create_room()
    key = wires.deployment.cli("policy", "key")
    assert key.returncode == 0, key.stderr
    wires.moderator.set_policy(room_id, json.loads(key.stdout))
    join = wires.deployment.cli("policy", "join", room_id, "--via", wires.deployment.hs_url)
    assert join.returncode == 0, join.stderr
    return room_id


def policy_refused(response: httpx.Response, rule: str) -> str:
    """The policy wire's refusal (Synapse: 400 M_FORBIDDEN), checked to come from ``rule``."""
    assert response.status_code == 400, response.text
    assert response.json()["errcode"] == "M_FORBIDDEN"
    reason = str(response.json()["error"])
    assert reason.startswith(f"{rule}: "), reason
    return reason


def test_policy_wire_word_rule(wires: Wires, protected: str) -> None:
    """A blocked word is refused for the protected room; clean text is signed and stored."""
    assert WORD in policy_refused(wires.moderator.send(protected, f"{WORD}!"), "blocked_words")
    assert wires.moderator.send(protected, "fine").status_code == 200


def test_policy_wire_banned_user(wires: Wires, protected: str) -> None:
    """A user banned by the followed list cannot post in the protected room."""
    troll = Client(wires.deployment, "troll")
    try:
        join = joined(troll, protected)  # refused already, or the message is
        response = troll.send(protected, "hello") if join.status_code == 200 else join
        assert "is banned by policy list #bans:localhost" in policy_refused(response,
                                                                             "policy_list")
    finally:
        troll.close()


async def test_policy_wire_follows_a_new_ban_within_seconds(wires: Wires,
                                                             protected: str) -> None:
    """A ban added to the list room applies within seconds, without a restart."""
    late = Client(wires.deployment, "late")
    try:
        assert joined(late, protected).status_code == 200
        assert late.send(protected, "before the ban").status_code == 200
        wires.ban("late", "@late*:localhost")
        await eventually(lambda: late.send(protected, "after the ban").status_code == 400)
    finally:
        late.close()


@pytest.fixture(scope="module")
def observed(wires: Wires) -> str:
    """An unprotected room the appservice bot sits in with the power to redact."""
    created = wires.moderator.call("POST", "/createRoom", {
        "preset": "public_chat",
        "power_level_content_override": {"users": {BOT: 100}},  # (v12: creators are above)
    })
    assert created.status_code == 200, created.text
    room_id = str(created.json()["room_id"])
    bot = httpx.post(f"{wires.deployment.hs_url}/_matrix/client/v3/join/{quote(room_id)}",
                     json={}, headers={"Authorization": f"Bearer {AS_TOKEN}"}, timeout=30)
    assert bot.status_code == 200, bot.text
    return room_id


def redacted_by(client: Client, room_id: str, event_id: str) -> str | None:
    """The reason of the redaction of ``event_id``, or ``None`` while it stands."""
    event = client.call("GET", f"/rooms/{quote(room_id)}/event/{quote(event_id)}").json()
    because = event.get("unsigned", {}).get("redacted_because")
    return None if because is None else str(because["content"].get("reason"))


async def test_appservice_wire_redacts_word_and_banned_user(wires: Wires,
                                                            observed: str) -> None:
    """Stored, then redacted with the rule's reason: a blocked word, a banned user's post."""
    sent = wires.moderator.send(observed, f"so {WORD}")
    assert sent.status_code == 200, sent.text
    clean = wires.moderator.send(observed, "clean")
    troll = Client(wires.deployment, "troll")
    try:
        assert joined(troll, observed).status_code == 200
        posted = troll.send(observed, "hello")
        assert posted.status_code == 200, posted.text
        word_reason = await eventually(
            lambda: redacted_by(wires.moderator, observed, sent.json()["event_id"]))
        assert word_reason.startswith("blocked_words: ")
        ban_reason = await eventually(
            lambda: redacted_by(wires.moderator, observed, posted.json()["event_id"]))
        assert ban_reason.startswith("policy_list: ") and troll.user_id in ban_reason
        assert redacted_by(wires.moderator, observed, clean.json()["event_id"]) is None
    finally:
        troll.close()


def replies(wires: Wires) -> list[str]:
    """The bot's messages in the management room, newest first."""
    chunk = wires.moderator.call(
        "GET", f"/rooms/{quote(wires.management_room)}/messages?dir=b&limit=20").json()
    return [e["content"]["body"] for e in chunk["chunk"]
            if e["type"] == "m.room.message" and e["sender"] == BOT]


async def command(wires: Wires, body: str, reply: str) -> None:
    """Say ``body`` in the management room; wait for the bot's answer holding ``reply``."""
    assert wires.moderator.send(wires.management_room, body).status_code == 200
    await eventually(lambda: any(reply in answer for answer in replies(wires)))


async def test_management_room_bans_and_toggles_dry_run(wires: Wires, protected: str) -> None:
    """A moderator bans a user and toggles dry run from the management room; the bot answers
    there, and the protected room follows at once."""
    spammer = Client(wires.deployment, "spammer")
    try:
        assert joined(spammer, protected).status_code == 200
        await command(wires, f"!policy ban {spammer.user_id} spam",
                      f"banned {spammer.user_id} in #bans:localhost")
        await eventually(lambda: spammer.send(protected, "buy now").status_code == 400)
        await command(wires, "!policy dry-run on", "dry run on")
        assert wires.moderator.send(protected, f"{WORD} in dry run").status_code == 200
        await command(wires, "!policy dry-run off", "dry run off")
        policy_refused(wires.moderator.send(protected, WORD), "blocked_words")
        await command(wires, "!policy audit 3", "would refuse (blocked_words): m.room.message")
    finally:
        spammer.close()


async def test_management_room_protects_a_room(wires: Wires) -> None:
    """``!policy protect ROOM``: the bot (invited, with power) sets ``m.room.policy`` naming
    the policy wire and invites its user, who joins; the policy wire then judges the room."""
    deployment = wires.deployment
    created = wires.moderator.call("POST", "/createRoom", {
        "preset": "public_chat", "invite": [BOT], "power_level_content_override": {
            "users": {BOT: 100}}})
    assert created.status_code == 200, created.text
    room_id = created.json()["room_id"]
    await command(wires, f"!policy protect {room_id}",
                  f"protected {room_id}: its policy server is {deployment.server_name}")
    state = wires.moderator.call("GET", f"/rooms/{quote(room_id)}/state/m.room.policy/")
    key = deployment.cli("policy", "key")
    assert state.json() == json.loads(key.stdout)

    def policy_user_joined() -> bool:
        member = wires.moderator.call(
            "GET", f"/rooms/{quote(room_id)}/state/m.room.member/{quote(deployment.policy_user)}")
        return member.status_code == 200 and member.json().get("membership") == "join"

    await eventually(policy_user_joined)
    policy_refused(wires.moderator.send(room_id, f"{WORD} here"), "blocked_words")
    assert wires.moderator.send(room_id, "fine").status_code == 200


@pytest.fixture(scope="module")
def module_wires(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wires]:
    """The same with the module wire on as well (Synapse asks before storing). Every
    callback fails open, so that the list room can be made before the container starts."""
    module = (f'[module]\nenabled = true\nport = {free_port()}\n'
              'secret = "policy-plugin-module-secret-0123"\n'
              + "".join(f"[module.callbacks.{name}]\nfail_open = true\n"
                        for name in DEFAULT_POLICIES))
    with running_wires(tmp_path_factory.mktemp("policy-module"), module) as running:
        yield running


async def test_module_wire_policy_list(module_wires: Wires) -> None:
    """A user banned by the followed list (who joined a room while the container was down,
    the module wire failing open): message, join of another room and room creation are
    refused before storage with the plugin's reason; another user's message goes through;
    a ban added to the list room later applies within seconds."""
    deployment, moderator = module_wires.deployment, module_wires.moderator
    troll, late = Client(deployment, "troll"), Client(deployment, "late")
    try:
        room_id, other = moderator.create_room(), moderator.create_room()
        deployment.stop_container()
        assert joined(troll, room_id).status_code == 200
        deployment.start_container()
        reason = refused(troll.send(room_id, "hello"), "policy_list")
        assert reason == (f"policy_list: {troll.user_id} is banned by policy list "
                          "#bans:localhost (user rule '@troll*:localhost': spam)")
        assert refused(joined(troll, other), "policy_list") == reason
        refused(troll.call("POST", "/createRoom", {"preset": "private_chat"}), "policy_list")
        assert joined(late, room_id).status_code == 200
        assert late.send(room_id, "before the ban").status_code == 200
        module_wires.ban("late", "@late*:localhost")
        await eventually(lambda: late.send(room_id, "after the ban").status_code == 403)
        assert late.user_id in refused(late.send(room_id, "still banned"), "policy_list")
        assert moderator.send(room_id, "fine").status_code == 200
    finally:
        troll.close()
        late.close()
