"""The plugin the module-wire tests run in the container.

Its rules are keyed on words so each test picks its behaviour by what it sends.
Every event it sees is recorded in :data:`SEEN` (the tests check ``stage``).
"""

from __future__ import annotations

import asyncio

from servletkit import Event, Modify, Veto, hookimpl

SEEN: list[Event] = []

VETO_ERRCODE = "ORG.SERVLETKIT.TEST_VETO"


def _localpart(user_id: str) -> str:
    return user_id[1:].split(":", 1)[0]


@hookimpl
async def on_send_event(event: Event):
    """Veto "forbidden", upper-case "/shout ...", stall on "slow", upper-case shouted topics,
    answer nonsense to "unserialisable"; in membership events, veto a "forbidden" display
    name and upper-case a shouted one."""
    SEEN.append(event)
    body = event.content.get("body")
    if event.type == "m.room.message" and isinstance(body, str):
        if "forbidden" in body:
            return Veto("the word 'forbidden' is not welcome here", VETO_ERRCODE)
        if body.startswith("/shout "):
            return Modify({**event.content, "body": body.removeprefix("/shout ").upper()})
        if body == "unserialisable":
            return Modify({"body": {"a", "set"}})
        if body.startswith("slow"):
            await asyncio.sleep(1.0)
    name = event.content.get("displayname")
    if event.type == "m.room.member" and isinstance(name, str):
        if "forbidden" in name:
            return Veto(f"the name {name!r} is not welcome here", VETO_ERRCODE)
        if name.startswith("/shout "):
            return Modify({**event.content, "displayname": name.removeprefix("/shout ").upper()})
    topic = event.content.get("topic")
    if event.type == "m.room.topic" and isinstance(topic, str) and topic.startswith("/shout "):
        return Modify({**event.content, "topic": topic.removeprefix("/shout ").upper()})
    return None


@hookimpl
def on_join_room(user_id: str, room_id: str):
    """Refuse joins by users whose localpart starts with "blocked"."""
    if _localpart(user_id).startswith("blocked"):
        return Veto(f"{user_id} may not join {room_id}", VETO_ERRCODE)
    return None


@hookimpl
def on_invite(inviter_id: str, invitee_id: str, room_id: str):
    """Refuse invites of users whose localpart starts with "blocked"."""
    if _localpart(invitee_id).startswith("blocked"):
        return Veto(f"{invitee_id} may not be invited", VETO_ERRCODE)
    return None


@hookimpl
def on_create_room(user_id: str, request):
    """Refuse rooms named "forbidden room"."""
    if request.get("name") == "forbidden room":
        return Veto("no forbidden rooms", VETO_ERRCODE)
    return None


@hookimpl
def on_connect_event_stream(user_id: str, device_id):
    """Refuse logins of users whose localpart starts with "nologin"."""
    if _localpart(user_id).startswith("nologin"):
        return Veto(f"{user_id} may not log in ({device_id})", VETO_ERRCODE)
    return None
