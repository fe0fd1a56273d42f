"""The plugin the integration tests deploy into a ``servletkit run`` subprocess.

It joins rooms it is invited to, counts every message it observes in its
``context.store`` (``seen/<event_id>`` → how many times it was delivered),
echoes ``!echo TEXT`` through a virtual user, vetoes messages containing
``forbidden-word``, creates rooms for aliases it is asked about, and slows
down on messages starting with ``slow`` (so a kill lands mid-transaction).
From ``servlet_init``, when the homeserver is up, it creates (or joins) the room
``#_astest_init`` and counts its lives in ``init/lives``: the container's own
requests must get through the module wire while plugins start.
"""

from __future__ import annotations

import asyncio

import httpx

from servletkit import Veto, hookimpl
from servletkit.wires.appservice.homeserver import MatrixRequestError

ECHO_LOCALPART = "_astest_echo"


@hookimpl
async def servlet_init(context):
    """Follow the init room (create it the first time); skipped while no homeserver answers."""
    hs = context.homeserver
    try:
        await hs.whoami()
    except httpx.TransportError:
        return  # the first start, before the test starts Synapse
    try:
        room_id = await hs.create_room(alias_localpart="_astest_init", preset="public_chat")
    except MatrixRequestError as exc:
        if exc.errcode != "M_ROOM_IN_USE":
            raise
        room_id = await hs.join(f"#_astest_init:{hs.server_name}")
    await context.store.put("init/room", room_id)
    await context.store.put("init/lives", await context.store.get("init/lives", 0) + 1)


@hookimpl
async def on_stored_event(event, context):
    """Count the message, join on invite, echo ``!echo`` as the virtual echo user."""
    hs = context.homeserver
    if (event.type == "m.room.member" and event.state_key == hs.user_id
            and event.content.get("membership") == "invite"):
        await hs.join(event.room_id)
        return
    if event.type != "m.room.message":
        return
    key = f"seen/{event.event_id}"
    await context.store.put(key, await context.store.get(key, 0) + 1)
    body = event.content.get("body", "")
    if body.startswith("slow"):
        await asyncio.sleep(0.02)
    if body.startswith("!echo ") and not event.sender.startswith("@_astest_"):
        echo = hs.as_user(f"@{ECHO_LOCALPART}:{hs.server_name}")
        await echo.register(ECHO_LOCALPART)
        await echo.set_displayname("Echo")
        await echo.join(event.room_id)
        await echo.send_message(event.room_id, f"echo: {body.removeprefix('!echo ')}",
                                txn_id=f"echo-{event.event_id}")


@hookimpl
def on_send_event(event):
    """Veto messages with the forbidden word once stored (redacted in redact mode); the
    module wire asks too, before storing, and is left alone (``event.wire`` tells)."""
    if event.wire == "appservice" and "forbidden-word" in str(event.content.get("body", "")):
        return Veto("forbidden-word is not welcome here")
    return None


@hookimpl
async def on_query_alias(alias, context):
    """Create a public room for ``#_astest_*`` aliases on demand."""
    localpart = alias[1:].split(":", 1)[0]
    if not localpart.startswith("_astest_"):
        return None
    await context.homeserver.create_room(alias_localpart=localpart, preset="public_chat",
                                         name=f"Bridged {localpart}")
    return True


@hookimpl
async def on_ephemeral(data, context):
    """Remember that typing notifications arrived."""
    if data.type == "m.typing" and data.room_id:
        await context.store.put(f"typing/{data.room_id}", list(data.content.get("user_ids", [])))
