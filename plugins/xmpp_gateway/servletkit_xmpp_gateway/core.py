"""What the gateway's relays share: the state and the calls one mixin makes on another.

:class:`~servletkit_xmpp_gateway.bridge.Bridge` sets these attributes and
combines the relay mixins (:class:`~servletkit_xmpp_gateway.outbound.OutboundRelay`,
:class:`~servletkit_xmpp_gateway.inbound.InboundRelay`); each mixin derives from
:class:`BridgeCore`, so the type checker knows what ``self`` holds without the
mixins naming ``Bridge``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import logging

    from slixmpp import JID
    from slixmpp.basexmpp import BaseXMPP
    from slixmpp.componentxmpp import ComponentXMPP

    from servletkit import PluginContext
    from servletkit.store.plugin import PluginStore
    from servletkit.wires.appservice.homeserver import HomeserverClient
    from servletkit_xmpp_gateway.accounts import Accounts
    from servletkit_xmpp_gateway.config import GatewayConfig

Kind = Literal["chat", "groupchat"]  # the XMPP message types the gateway sends


class BridgeCore:
    """The state of one running gateway (set by ``Bridge.__init__``) and the
    operations every relay may use (implemented by ``Bridge`` or a mixin)."""

    config: GatewayConfig
    context: PluginContext
    hs: HomeserverClient
    store: PluginStore
    log: logging.Logger
    server_name: str
    bot_jid: str  # the gateway's own occupant JID
    xmpp: ComponentXMPP | None  # the live component session, while online
    accounts: Accounts  # linked XMPP accounts and their sessions
    occupants: dict[str, dict[str, str]]  # muc → nick → XMPP address
    puppets: dict[tuple[str, str], str]  # (muc, user_id) → nick in the MUC
    our_nicks: dict[str, set[str]]  # muc → nicks our puppets have or are taking
    rooms: dict[str, str]  # muc → room ID
    _joined_matrix: set[tuple[str, str]]  # (room_id, virtual user)
    _profiles: dict[str, str]  # virtual user → display name set
    standings: dict[tuple[str, str], tuple[str, str]]  # (muc, user) → affiliation, role

    def is_ours(self, user_id: str) -> bool:
        """Whether ``user_id`` is the appservice's bot or one of its virtual users."""
        raise NotImplementedError

    async def queue_out(self, op: dict[str, Any]) -> None:
        """Queue an operation for XMPP (durable with the homeserver transaction)."""
        raise NotImplementedError

    def queue_in(self, op: dict[str, Any]) -> None:
        """Queue an operation for Matrix."""
        raise NotImplementedError

    def puppet_full_jid(self, user_id: str) -> JID:
        """The full JID a Matrix user's puppet sends from."""
        raise NotImplementedError

    def stream(self, sender: JID) -> BaseXMPP:
        """The XMPP stream that sends as ``sender`` (a linked session, or the component)."""
        raise NotImplementedError

    def ours_in_muc(self, muc: str, nick: str, real: JID) -> bool:
        """Whether occupant ``nick`` of ``muc`` (real JID ``real`` if known) is the
        gateway's bot or one of its puppets."""
        raise NotImplementedError

    def linked_direct(self, user_id: str, msg: Any, bodiless: bool = False) -> None:
        """Queue a 1:1 message a linked account's session got for Matrix."""
        raise NotImplementedError

    def dm_sender(self, msg: Any) -> tuple[str, str, str] | None:
        """The XMPP address, name and Matrix user of a 1:1 message to a puppet."""
        raise NotImplementedError

    async def virtual(self, address: str, displayname: str) -> str:
        """The virtual user standing for XMPP ``address``, registered and named."""
        raise NotImplementedError

    async def join_matrix(self, room_id: str, user_id: str) -> None:
        """Join virtual ``user_id`` to ``room_id``."""
        raise NotImplementedError

    async def apply_typing(self, op: dict[str, Any]) -> None:
        """Carry out a queued XMPP chat state in Matrix."""
        raise NotImplementedError

    async def notice(self, room_id: str, text: str) -> None:
        """Tell a Matrix room something, as the gateway's bot."""
        raise NotImplementedError

    async def moderate_out(self, op: dict[str, Any], redacted: str) -> None:
        """Have the MUC retract someone else's message a Matrix user redacted."""
        raise NotImplementedError

    async def apply_moderation(self, op: dict[str, Any]) -> None:
        """Carry out a queued XMPP moderation in Matrix."""
        raise NotImplementedError

    async def set_standing(self, muc: str, room_id: str, user_id: str, nick: str,
                           levels: dict[str, Any] | None = None) -> None:
        """Give a Matrix user's puppet the MUC affiliation and role their power says."""
        raise NotImplementedError

    async def apply_roles_out(self, op: dict[str, Any]) -> None:
        """Carry out a queued power change, kick or ban in the MUC."""
        raise NotImplementedError

    def xmpp_standing(self, muc: str, address: str, nick: str, pres: Any) -> None:
        """Queue the Matrix power of an XMPP occupant whose role may have changed."""
        raise NotImplementedError

    def puppet_removed(self, muc: str, nick: str, pres: Any) -> None:
        """Queue the Matrix kick or ban of a puppet an XMPP moderator removed."""
        raise NotImplementedError

    async def apply_roles_in(self, op: dict[str, Any]) -> None:
        """Carry out a queued XMPP power change, kick or ban in Matrix."""
        raise NotImplementedError

    def reader(self, op: dict[str, Any]) -> HomeserverClient:
        """A Matrix client that can read the room of outbound operation ``op``."""
        raise NotImplementedError
