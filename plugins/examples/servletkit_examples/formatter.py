"""Rewrite message text: ``/shout hello`` becomes ``HELLO``, ``/me``-style markers stay.

Config (``[plugins.formatter]``): ``prefix``, the command that triggers
upper-casing (default ``/shout ``).
"""

from servletkit import Event, Modify, PluginContext, hookimpl


class Formatter:
    """A class-based plugin: the container instantiates it with no arguments."""

    @hookimpl
    def on_send_event(self, event: Event, context: PluginContext) -> Modify | None:
        """Upper-case a text message that starts with the configured prefix."""
        body = event.content.get("body")
        prefix = context.config.get("prefix", "/shout ")
        if event.type != "m.room.message" or not isinstance(body, str):
            return None
        if not body.startswith(prefix):
            return None
        loud = body[len(prefix):].upper()
        context.log.info("modified %s's message: %r becomes %r (%s)",
                         event.sender, body, loud, event.stage)
        return Modify(content={**event.content, "body": loud})
