"""servletkit's XMPP gateway: a Matrix room and an XMPP group chat are one conversation.

The entry point ``xmpp_gateway`` names :class:`XmppGateway`; the container
makes one instance per load (so a reload gets a fresh one) and all state lives
on it or in ``context.store``. Configuration and namespaces: the README.
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from servletkit import Ephemeral, Event, PluginContext, hookimpl
from servletkit_xmpp_gateway import linking, media
from servletkit_xmpp_gateway.bridge import Bridge
from servletkit_xmpp_gateway.config import GatewayConfig, GatewayConfigError

__all__ = ["GatewayConfig", "GatewayConfigError", "XmppGateway"]


class XmppGateway:
    """The plugin: hooks that hand over to a :class:`Bridge` started in ``servlet_init``."""

    def __init__(self) -> None:
        self.bridge: Bridge | None = None

    @hookimpl
    async def servlet_init(self, context: PluginContext) -> None:
        """Connect to the XMPP server (in the background); idle if not configured."""
        if "component_jid" not in context.config:
            context.log.warning("xmpp_gateway is installed but not configured (no "
                                "component_jid in [plugins.xmpp_gateway]); it stays idle")
            return
        self.bridge = Bridge(GatewayConfig.from_table(context.config), context)
        await self.bridge.start()

    @hookimpl
    def servlet_routes(self, context: PluginContext) -> list[BaseRoute] | None:
        """``media/{token}/{filename}``: the files Matrix users sent to XMPP (``media_url``);
        ``link/{token}``: the form where a Matrix user links their XMPP account."""
        if self.bridge is None:
            return None
        return [*media.routes(self.bridge), *linking.routes(self.bridge)]

    @hookimpl
    async def servlet_destroy(self, context: PluginContext) -> None:
        """Close the XMPP stream; queued messages stay in the store for the next start."""
        if self.bridge is not None:
            await self.bridge.close()
            self.bridge = None

    @hookimpl
    async def on_stored_event(self, event: Event, context: PluginContext) -> None:
        """Relay what Matrix users do in bridged rooms and DMs to XMPP."""
        if self.bridge is not None:
            await self.bridge.matrix_event(event)

    @hookimpl
    async def on_ephemeral(self, data: Ephemeral, context: PluginContext) -> None:
        """Relay Matrix users' typing in bridged rooms and DMs as XMPP chat states."""
        if self.bridge is not None:
            await self.bridge.matrix_typing(data)

    @hookimpl
    async def on_query_alias(self, alias: str, context: PluginContext) -> bool | None:
        """Create the Matrix side of ``#{alias_prefix}{room}_{muc_domain}``."""
        return None if self.bridge is None else await self.bridge.room_for_alias(alias)

    @hookimpl
    async def on_query_user(self, user_id: str, context: PluginContext) -> bool | None:
        """Create the virtual user of an XMPP address (``@{user_prefix}{address}``)."""
        return None if self.bridge is None else await self.bridge.query_user(user_id)
