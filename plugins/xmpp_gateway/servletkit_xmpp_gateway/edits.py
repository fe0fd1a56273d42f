"""Edits: XEP-0308 last message corrections ↔ Matrix ``m.replace``.

Both sides name the *original* message in every edit (Matrix requires it; XEP-0308
asks it), but some XMPP clients correct a correction by its own id. So each edit
that crosses the gateway is recorded as ``edit/<edit event id>`` → original event
ID, and a reference to an edit is followed back to the original: edits of edits
follow the original. The newest version wins on both sides because the queues
carry edits in the order they were made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from servletkit_xmpp_gateway import msgids

if TYPE_CHECKING:
    from servletkit.store.plugin import PluginStore

CORRECT_NS = "urn:xmpp:message-correct:0"


async def original_of(store: PluginStore, event_id: str) -> str:
    """The original event of ``event_id`` if it is an edit, else ``event_id`` itself."""
    original: str | None = await store.get(f"edit/{event_id}")
    return original or event_id


async def note(store: PluginStore, event_id: str, content: dict[str, Any]) -> None:
    """Record ``event_id`` as an edit of its original, if ``content`` is an edit."""
    relation = content.get("m.relates_to")
    if isinstance(relation, dict) and relation.get("rel_type") == "m.replace":
        await store.put(f"edit/{event_id}", await original_of(store, relation["event_id"]))


def read(msg: Any) -> str | None:
    """The id of the message that XMPP ``msg`` corrects, if it is a correction."""
    replace = msg.xml.find(f"{{{CORRECT_NS}}}replace")
    return None if replace is None else replace.get("id") or None


async def content_in(store: PluginStore, scope: str, replace: str | None,
                     content: dict[str, Any]) -> dict[str, Any]:
    """Matrix content for an XMPP message: an ``m.replace`` of the original when the
    message corrects one the gateway knows (``replace`` is the corrected XMPP id)."""
    if replace is None:
        return content
    target = await msgids.event_for(store, scope, replace)
    if target is None:
        return content  # a correction of something never bridged: show it as it is
    edit = {"msgtype": content["msgtype"], "body": f"* {content['body']}",
            "m.new_content": content,
            "m.relates_to": {"rel_type": "m.replace",
                             "event_id": await original_of(store, target)}}
    if "formatted_body" in content:
        edit |= {"format": content["format"],
                 "formatted_body": f"* {content['formatted_body']}"}
    return edit


async def content_out(store: PluginStore,
                      content: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """For a Matrix message: the content to carry and the XMPP id it corrects.

    An edit carries its ``m.new_content`` and names the original's XMPP ``id``;
    an edit of a message that never crossed the gateway goes as a new message.
    """
    relation = content.get("m.relates_to")
    new = content.get("m.new_content")
    if not (isinstance(relation, dict) and relation.get("rel_type") == "m.replace"
            and isinstance(new, dict)):
        return content, None
    original = await original_of(store, str(relation.get("event_id")))
    ids = await msgids.xmpp_ids_for(store, original)
    return new, (ids or {}).get("id")
