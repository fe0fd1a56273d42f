"""servletkit plugin ``policy_server``: content rules and Matrix policy lists on every wire.

See this distribution's README for the config and what each rule refuses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from servletkit import Event, PluginContext, Veto, hookimpl
from servletkit_policy_server.config import PolicyConfigError, Settings, parse_settings
from servletkit_policy_server.policy_lists import PolicyIndex, PolicyRule, rule_kind

__all__ = ["PolicyConfigError", "PolicyIndex", "PolicyServer"]


class _EventSubject:
    """How the log names an event, formatted only when a line is logged."""

    __slots__ = ("event",)

    def __init__(self, event: Event) -> None:
        self.event = event

    def __str__(self) -> str:
        event = self.event
        return f"{event.type} {event.event_id} of {event.sender} in {event.room_id}"


class PolicyServer:
    """The plugin: the container instantiates it with no arguments.

    ``homeserver`` and ``clock`` replace ``context.homeserver`` and the flood
    rule's clock, for tests.
    """

    def __init__(self, homeserver: Any = None, clock: Callable[[], float] | None = None) -> None:
        self._homeserver_override = homeserver
        self._clock = clock
        self.settings = Settings((), (), False, False)
        self.index = PolicyIndex()
        self.list_rooms: dict[str, str] = {}
        """List room id → how the config names it."""

    @hookimpl
    async def servlet_init(self, context: PluginContext) -> None:
        """Check the config, then read the ban rules of every followed list room."""
        self.settings = parse_settings(context.config, self._clock)
        homeserver = self._homeserver_override or context.homeserver
        if self.settings.policy_lists and homeserver is None:
            raise PolicyConfigError("policy_lists", "following list rooms needs the container's "
                                                    "[appservice] section (a homeserver client)")
        for name in self.settings.policy_lists:
            room_id = await homeserver.join(name)
            self.list_rooms[room_id] = name
            await self._load_list(homeserver, room_id)
        context.log.info("policy_server: %d rules, %d policy-list bans from %d lists%s",
                         len(self.settings.rules), len(self.index), len(self.list_rooms),
                         " (dry run)" if self.settings.dry_run else "")

    async def _load_list(self, homeserver: Any, room_id: str) -> None:
        """Replace the rules of list room ``room_id`` by those of its current state."""
        for source in [rule.source for rule in self.index.rules() if rule.source[0] == room_id]:
            self.index.set(source, None)
        for state_event in await homeserver.get_room_state(room_id):
            self.index.apply_state(room_id, state_event)

    def _decide(self, context: PluginContext, rule_name: str, dry_run: bool, detail: str,
                subject: object) -> Veto | None:
        """The Veto for a rule that fired, or ``None`` (logged) in dry run."""
        if dry_run or self.settings.dry_run:
            context.log.info("dry run: would refuse %s: rule %s: %s", subject, rule_name, detail)
            return None
        context.log.info("refused %s: rule %s: %s", subject, rule_name, detail)
        return Veto(f"{rule_name}: {detail}")

    def _ban(self, context: PluginContext, rule: PolicyRule, who: str,
             subject: object) -> Veto | None:
        listed = self.list_rooms.get(rule.source[0], rule.source[0])
        detail = f"{who} is banned by policy list {listed}"
        detail += f" ({rule.kind} rule {rule.entity!r}{': ' + rule.reason if rule.reason else ''})"
        return self._decide(context, "policy_list", self.settings.policy_list_dry_run, detail,
                            subject)

    @hookimpl
    def on_send_event(self, event: Event, context: PluginContext) -> Veto | None:
        """Refuse an event of a banned user or server, or one that breaks a content rule."""
        subject = _EventSubject(event)
        if event.room_id in self.list_rooms:
            return None  # moderators must be able to edit their own lists
        ban = self.index.banned_user(event.sender)
        if ban is not None:
            veto = self._ban(context, ban, event.sender, subject)
            if veto is not None:
                return veto
        for rule in self.settings.rules:
            detail = rule.check(event)
            if detail is not None:
                veto = self._decide(context, rule.name, rule.dry_run, detail, subject)
                if veto is not None:
                    return veto
        return None

    @hookimpl
    def on_join_room(self, user_id: str, room_id: str, context: PluginContext) -> Veto | None:
        """Refuse the join of a banned user (or server), or a join into a banned room."""
        subject = f"the join of {user_id} to {room_id}"
        ban = self.index.banned_user(user_id)
        who = user_id
        if ban is None:
            ban, who = self.index.match("room", room_id), room_id
        return None if ban is None else self._ban(context, ban, who, subject)

    @hookimpl
    def on_invite(self, inviter_id: str, invitee_id: str, room_id: str,
                  context: PluginContext) -> Veto | None:
        """Refuse an invite by or of a banned user (or server)."""
        subject = f"the invite of {invitee_id} by {inviter_id} to {room_id}"
        for user_id in (inviter_id, invitee_id):
            ban = self.index.banned_user(user_id)
            if ban is not None:
                return self._ban(context, ban, user_id, subject)
        return None

    @hookimpl
    async def on_stored_event(self, event: Event, context: PluginContext) -> None:
        """Keep the index current with the rule events (and redactions) of the list rooms."""
        if event.room_id not in self.list_rooms:
            return
        if event.is_state and rule_kind(event.type) is not None:
            self.index.apply_state(event.room_id, event.to_json())
            context.log.info("policy list %s: %s %s now %r", self.list_rooms[event.room_id],
                             event.type, event.state_key, event.content.get("entity"))
        elif event.type == "m.room.redaction":
            homeserver = self._homeserver_override or context.homeserver
            await self._load_list(homeserver, event.room_id)
