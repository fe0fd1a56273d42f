"""The plugin the integration tests deploy into a ``servletkit run`` subprocess.

It joins rooms it is invited to, counts every message it observes in its
``context.store`` (``seen/<event_id>`` → how many times it was delivered),
echoes ``!echo TEXT`` through a virtual user, vetoes messages containing
``forbidden-word``, creates rooms for aliases it is asked about, and slows
down on messages starting with ``slow`` (so a kill lands mid-transaction).
"""

from __future__ import annotations

import asyncio

from servletkit import Veto, hookimpl

ECHO_LOCALPART = "_astest_echo"


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
    context.store.put(key, context.store.get(key, 0) + 1)
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
    """Veto messages with the forbidden word (redacted in redact mode)."""
    if "forbidden-word" in str(event.content.get("body", "")):
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
def on_ephemeral(data, context):
    """Remember that typing notifications arrived."""
    if data.type == "m.typing" and data.room_id:
        context.store.put(f"typing/{data.room_id}", list(data.content.get("user_ids", [])))
