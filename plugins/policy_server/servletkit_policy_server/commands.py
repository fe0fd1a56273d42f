"""Management-room commands: ``!policy ...`` from any member of ``management_room``
(make it a private room), answered in the room by the plugin's bot (the appservice user).

    !policy status                  rules, list bans, dry run, decisions kept
    !policy rules                   the rules and which are in dry run, then each
                                    community's rooms, the keys it sets and its rules
    !policy dry-run on|off          the whole plugin (kept in the store, every instance)
    !policy ban ENTITY [REASON]     an m.ban rule in the first policy list (user, server
                                    or room; globs allowed); the bot needs power there
    !policy unban ENTITY            removes the m.ban rules of ENTITY from the lists
    !policy audit [N]               the newest N decisions (default 5)
    !policy protect ROOM            make this container ROOM's policy server: the bot
                                    joins ROOM, sets m.room.policy (it needs the power
                                    to) and invites the policy wire's user, who joins
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from servletkit.wires.appservice.homeserver import MatrixRequestError

if TYPE_CHECKING:
    from servletkit import PolicyServerInfo
    from servletkit.store import PluginStore
    from servletkit_policy_server import PolicyServer

PREFIX = "!policy"
USAGE = ("commands: !policy status | rules | dry-run on|off | ban ENTITY [REASON] | "
         "unban ENTITY | audit [N] | protect ROOM")


def entity_kind(entity: str) -> str:
    """``user`` for ``@…``, ``room`` for ``!…``/``#…``, else ``server``."""
    return {"@": "user", "!": "room", "#": "room"}.get(entity[:1], "server")


async def protect(homeserver: Any, policy: PolicyServerInfo | None, room: str) -> str:
    """``!policy protect ROOM``: name this container's policy wire in ``room``'s
    ``m.room.policy`` and invite its user (the wire accepts and joins by itself)."""
    if policy is None:
        return ("no policy wire: add a [policy] section to the container's config to "
                "protect rooms")
    try:
        room_id = await homeserver.join(room)
    except MatrixRequestError as exc:
        return f"cannot join {room}: {exc.errcode} {exc.error} (invite the bot first)"
    try:
        await homeserver.send_state(room_id, "m.room.policy", "", policy.state_content())
    except MatrixRequestError as exc:
        return (f"cannot set m.room.policy in {room}: {exc.errcode} {exc.error} (give the "
                "bot the power to send that state event)")
    members = await homeserver.get_room_state(room_id)
    if not any(event.get("type") == "m.room.member" and event.get("state_key") ==
               policy.user_id and event.get("content", {}).get("membership") == "join"
               for event in members):
        try:
            await homeserver.invite(room_id, policy.user_id)
        except MatrixRequestError as exc:
            return (f"m.room.policy is set in {room}, but inviting {policy.user_id} failed: "
                    f"{exc.errcode} {exc.error}; run `servletkit policy join {room_id}`")
    return (f"protected {room}: its policy server is {policy.server_name} "
            f"({policy.user_id} invited, it joins by itself)")


def _rule_names(rules: list[dict[str, Any]]) -> str:
    """``describe()``'s rules as ``name, name (dry run), ...``."""
    return ", ".join(f"{rule['name']}{' (dry run)' if rule['dry_run'] else ''}"
                     for rule in rules)


async def run_command(plugin: PolicyServer, homeserver: Any, store: PluginStore,
                      policy: PolicyServerInfo | None, body: str) -> str:
    """Carry out one ``!policy`` command (``policy``: the container's policy wire, for
    ``protect``); the reply."""
    words = body.split()[1:]
    command, args = (words[0].lower(), words[1:]) if words else ("", [])
    if command == "status":
        described = await plugin.describe(store)
        return (f"{len(described['rules'])} rules, {described['bans']} policy-list bans from "
                f"{len(described['policy_lists'])} lists; dry run "
                f"{'on' if described['dry_run'] else 'off'}; "
                f"{len(await plugin.audit.newest(store, plugin.audit.kept))} decisions kept")
    if command == "rules":
        described = await plugin.describe(store)
        return "rules: " + _rule_names(described["rules"]) + (
            "; dry run on" if described["dry_run"] else "") + "".join(
            f"; community {', '.join(community['rooms'])} (sets "
            f"{', '.join(community['settings']) or 'nothing'}): "
            + _rule_names(community["rules"]) for community in described["communities"])
    if command == "dry-run" and args and args[0].lower() in ("on", "off"):
        await plugin.set_dry_run(store, args[0].lower() == "on")
        return f"dry run {args[0].lower()}"
    if command == "audit" and (not args or args[0].isdigit()):
        decisions = await plugin.audit.newest(store, int(args[0]) if args else 5)
        return "\n".join(f"{d['outcome']} ({d['rule']}): {d['subject']}: {d['detail']}"
                         for d in decisions) or "no decisions yet"
    if command == "protect" and len(args) == 1:
        return await protect(homeserver, policy, args[0])
    if command in ("ban", "unban") and args:
        if not plugin.list_rooms:
            return "no policy_lists are configured: nowhere to write the rule"
        entity, kind = args[0], entity_kind(args[0])
        if command == "ban":
            list_room = next(iter(plugin.list_rooms))
            await homeserver.send_state(list_room, f"m.policy.rule.{kind}", f"rule:{entity}", {
                "entity": entity, "recommendation": "m.ban",
                "reason": " ".join(args[1:]) or "banned from the management room"})
            return f"banned {entity} in {plugin.list_rooms[list_room]}"
        sources = [rule.source for rule in plugin.index.rules() if rule.entity == entity]
        for room_id, event_type, state_key in sources:
            await homeserver.send_state(room_id, event_type, state_key, {})
        return f"unbanned {entity} ({len(sources)} rules removed)" if sources \
            else f"{entity} is not banned by the followed lists"
    return USAGE
