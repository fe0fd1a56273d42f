"""servletkit plugin ``policy_server``: content rules and Matrix policy lists on every wire.

See this distribution's README for the config and what each rule refuses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import attrs
from starlette.routing import BaseRoute

from servletkit import Event, PluginContext, Veto, hookimpl
from servletkit.store import PluginStore
from servletkit_policy_server.admin import admin_routes
from servletkit_policy_server.audit import AuditLog, Decision, Outcome
from servletkit_policy_server.commands import PREFIX as COMMAND_PREFIX
from servletkit_policy_server.commands import run_command
from servletkit_policy_server.config import PolicyConfigError, Settings, parse_settings
from servletkit_policy_server.policy_lists import PolicyIndex, PolicyRule, rule_kind
from servletkit_policy_server.stored_rules import StoredRule

__all__ = ["DRY_RUN_SECONDS", "PolicyConfigError", "PolicyIndex", "PolicyServer"]


DRY_RUN_KEY = "dry_run"
"""The store key of the dry-run toggle (absent: as configured)."""
DRY_RUN_SECONDS = 1.0
"""How long an instance trusts the toggle it read: a toggle made on another instance
sharing the store applies here within this, and a refusal seldom reads the store."""


@attrs.frozen
class Fired:
    """A rule that fired: its name, whether it is in dry run on its own, why."""

    name: str
    dry_run: bool
    detail: str


@attrs.frozen
class _Subject:
    """What a decision is about, as the log and the audit name it."""

    text: str
    room_id: str

    def __str__(self) -> str:
        return self.text


class _EventSubject:
    """An event as the subject of a decision, formatted only when needed."""

    __slots__ = ("event",)

    def __init__(self, event: Event) -> None:
        self.event = event

    @property
    def room_id(self) -> str:
        return self.event.room_id

    def __str__(self) -> str:
        event = self.event
        return f"{event.type} {event.event_id} of {event.sender} in {event.room_id}"


Subject = _Subject | _EventSubject


def _described_rules(settings: Settings) -> list[dict[str, Any]]:
    """The rules of ``settings`` (global or a community's) in order, each with its dry run."""
    rules = [(rule.name, rule.dry_run) for rule in settings.rules]
    rules += [(rule.name, rule.dry_run) for rule in settings.stored]
    rules.append(("policy_list", settings.policy_list_dry_run))
    return [{"name": name, "dry_run": dry_run} for name, dry_run in rules]


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
        self.management_room: str | None = None
        """The management room's id, once joined."""
        self.audit = AuditLog(1000)
        self._dry_run: tuple[float, bool] | None = None
        """When the toggle was last read (monotonic), and its value."""

    @hookimpl
    async def servlet_init(self, context: PluginContext) -> None:
        """Check the config, read the ban rules of every followed list room, join the
        management room."""
        self.settings = parse_settings(context.config, self._clock)
        self.audit = AuditLog(self.settings.audit_kept)
        homeserver: Any = self._homeserver_override or context.homeserver
        for key, needed in (("policy_lists", self.settings.policy_lists),
                            ("management_room", self.settings.management_room)):
            if needed and homeserver is None:
                raise PolicyConfigError(key, "needs the container's [appservice] section "
                                             "(a homeserver client)")
        for name in self.settings.policy_lists:
            room_id = await homeserver.join(name)
            self.list_rooms[room_id] = name
            await self._load_list(homeserver, room_id)
        if self.settings.management_room:
            self.management_room = await homeserver.join(self.settings.management_room)
        assert context.store is not None  # the container gives every plugin one
        self.audit.start(context.store, context.log)  # last: servlet_destroy stops it
        context.log.info("policy_server: %d rules, %d policy-list bans from %d lists%s",
                         len(self.settings.rules) + len(self.settings.stored),
                         len(self.index), len(self.list_rooms),
                         " (dry run)" if self.settings.dry_run else "")

    @hookimpl
    def servlet_routes(self, context: PluginContext) -> list[BaseRoute] | None:
        """The admin routes (``/_servletkit/plugins/policy_server/...``) when
        ``admin_token`` is set."""
        if not self.settings.admin_token:
            return None
        assert context.store is not None  # the container gives every plugin one
        return admin_routes(self, context.store)

    @hookimpl
    async def servlet_destroy(self, context: PluginContext) -> None:
        """Write the buffered audit records."""
        assert context.store is not None  # the container gives every plugin one
        await self.audit.stop(context.store)

    async def describe(self, store: PluginStore) -> dict[str, Any]:
        """The rules, dry run, lists and communities, as the admin route and ``!policy
        rules`` show them: each community with its rooms, the keys it sets and its rules."""
        return {
            "rules": _described_rules(self.settings),
            "dry_run": await self.dry_run(store),
            "policy_lists": self.list_rooms,
            "bans": len(self.index),
            "communities": [{"rooms": list(community.rooms), "dry_run": community.dry_run,
                             "settings": dict(community.overrides),
                             "rules": _described_rules(community)}
                            for community in self.settings.each_community()],
        }

    async def set_dry_run(self, store: PluginStore, on: bool) -> None:
        """Toggle dry run for the whole plugin, durably (it outlives the config's value)."""
        await store.put(DRY_RUN_KEY, on)
        self._dry_run = (time.monotonic(), on)

    async def _load_list(self, homeserver: Any, room_id: str) -> None:
        """Replace the rules of list room ``room_id`` by those of its current state."""
        for source in [rule.source for rule in self.index.rules() if rule.source[0] == room_id]:
            self.index.set(source, None)
        for state_event in await homeserver.get_room_state(room_id):
            self.index.apply_state(room_id, state_event)

    def _ban(self, rule: PolicyRule, who: str, room_id: str) -> Fired:
        listed = self.list_rooms.get(rule.source[0], rule.source[0])
        detail = f"{who} is banned by policy list {listed}"
        detail += f" ({rule.kind} rule {rule.entity!r}{': ' + rule.reason if rule.reason else ''})"
        return Fired("policy_list", self.settings.of_room(room_id).policy_list_dry_run, detail)

    async def dry_run(self, store: PluginStore) -> bool:
        """Whether the whole plugin is in dry run: as last toggled (admin route, management
        room) on any instance, else as configured."""
        now = time.monotonic()
        if self._dry_run is None or now - self._dry_run[0] > DRY_RUN_SECONDS:
            toggled = await store.get(DRY_RUN_KEY)
            self._dry_run = (now, self.settings.dry_run if toggled is None else bool(toggled))
        return self._dry_run[1]

    async def _conclude(self, context: PluginContext, fired: list[Fired], subject: Subject,
                        stored: tuple[StoredRule, ...] = ()) -> Veto | None:
        """Check ``subject`` by the ``stored`` rules until one refuses (unless something
        refused already), then log and audit each rule that fired; the Veto of the first
        that refuses."""
        store = context.store
        assert store is not None  # the container gives every plugin one
        for stored_rule in stored:
            if fired and not fired[-1].dry_run:
                break
            assert isinstance(subject, _EventSubject)
            detail = await stored_rule.check(subject.event, store)
            if detail is not None:
                fired.append(Fired(stored_rule.name, stored_rule.dry_run, detail))
        if not fired:
            return None
        dry_run = await self.dry_run(store)
        veto = None
        event = subject.event if isinstance(subject, _EventSubject) else None
        for rule in fired:
            outcome: Outcome = "would refuse" if rule.dry_run or dry_run else "refused"
            context.log.info("%s %s: rule %s: %s", "dry run: would refuse"
                             if outcome == "would refuse" else "refused", subject, rule.name,
                             rule.detail)
            await self.audit.record(store, Decision(
                rule.name, outcome, str(subject), rule.detail,
                wire=event.wire if event else None, event_id=event.event_id if event else None,
                room_id=event.room_id if event else subject.room_id))
            if outcome == "refused" and veto is None:
                veto = Veto(f"{rule.name}: {rule.detail}")
        return veto

    @hookimpl
    async def on_send_event(self, event: Event, context: PluginContext) -> Veto | None:
        """Refuse an event of a banned user or server, or one that breaks a content rule.

        The store is read and written only when a rule fired (dry run, audit) or a
        stored rule (flood, join wave, media first) looks at the event.
        """
        if event.room_id in self.list_rooms or event.room_id == self.management_room:
            return None  # moderators must be able to edit their lists and give commands
        fired: list[Fired] = []
        ban = self.index.banned_user(event.sender)
        if ban is not None:
            fired.append(self._ban(ban, event.sender, event.room_id))
        settings = self.settings.of_room(event.room_id)
        for rule in settings.rules:
            if fired and not fired[-1].dry_run:
                break
            detail = rule.check(event)
            if detail is not None:
                fired.append(Fired(rule.name, rule.dry_run, detail))
        stored = tuple(rule for rule in settings.stored if rule.counts(event))
        if stored and not (fired and not fired[-1].dry_run):
            return await self._conclude(context, fired, _EventSubject(event), stored)
        return await self._conclude(context, fired, _EventSubject(event)) if fired else None

    @hookimpl
    async def on_join_room(self, user_id: str, room_id: str, context: PluginContext,
                           ) -> Veto | None:
        """Refuse the join of a banned user (or server), or a join into a banned room."""
        ban = self.index.banned_user(user_id)
        who = user_id
        if ban is None:
            ban, who = self.index.match("room", room_id), room_id
        if ban is None:
            return None
        return await self._conclude(context, [self._ban(ban, who, room_id)],
                              _Subject(f"the join of {user_id} to {room_id}", room_id))

    @hookimpl
    async def on_invite(self, inviter_id: str, invitee_id: str, room_id: str,
                        context: PluginContext) -> Veto | None:
        """Refuse an invite by or of a banned user (or server)."""
        for user_id in (inviter_id, invitee_id):
            ban = self.index.banned_user(user_id)
            if ban is not None:
                return await self._conclude(context, [self._ban(ban, user_id, room_id)], _Subject(
                    f"the invite of {invitee_id} by {inviter_id} to {room_id}", room_id))
        return None

    @hookimpl
    async def on_stored_event(self, event: Event, context: PluginContext) -> None:
        """Keep the index current with the rule events (and redactions) of the list rooms;
        answer ``!policy`` commands in the management room."""
        homeserver: Any = self._homeserver_override or context.homeserver
        if event.room_id == self.management_room:
            body = event.content.get("body")
            if (event.type == "m.room.message" and isinstance(body, str)
                    and body.split(maxsplit=1)[:1] == [COMMAND_PREFIX]
                    and event.sender != homeserver.user_id):
                assert context.store is not None  # the container gives every plugin one
                reply = await run_command(self, homeserver, context.store, context.policy,
                                          body)
                await homeserver.send_message(event.room_id, reply)
            return
        if event.room_id not in self.list_rooms:
            return
        if event.is_state and rule_kind(event.type) is not None:
            self.index.apply_state(event.room_id, event.to_json())
            context.log.info("policy list %s: %s %s now %r", self.list_rooms[event.room_id],
                             event.type, event.state_key, event.content.get("entity"))
        elif event.type == "m.room.redaction":
            await self._load_list(homeserver, event.room_id)
