"""Veto messages that contain a forbidden word.

Config (``[plugins.word_filter]``): ``words``, a list of words (case-insensitive);
``reason``, what the sender is told.
"""

from servletkit import Event, PluginContext, Veto, hookimpl


@hookimpl
def on_send_event(event: Event, context: PluginContext) -> Veto | None:
    """Veto an ``m.room.message`` whose body contains one of the configured words."""
    body = event.content.get("body")
    if event.type != "m.room.message" or not isinstance(body, str):
        return None
    words = context.config.get("words", ["forbidden"])
    lowered = body.lower()
    for word in words:
        if word.lower() in lowered:
            context.log.info("vetoed %s's message in %s: it contains %r (%s)",
                             event.sender, event.room_id, word, event.stage)
            return Veto(context.config.get("reason", f"the word {word!r} is not allowed here"))
    return None
