"""The plugin's ``[plugins.policy_server]`` table, checked once into :class:`Settings`.

Keys (all optional)::

    dry_run = false            # true: refuse nothing, log what would have been refused
    dry_run_rules = []         # rule names in dry run on their own ("flood", "policy_list" ...)
    blocked_words = []         # words (whole word, any case)
    blocked_patterns = []      # regular expressions (any case)
    max_mentions = 10          # distinct users mentioned per message
    flood_messages = 5         # messages per sender and room ...
    flood_seconds = 10         # ... per this many seconds
    flood_room_messages = 50   # messages per room per flood_seconds
    max_event_bytes = 65536    # JSON size of any event
    blocked_link_domains = []  # links to these domains (and subdomains) are refused ...
    max_links = 5              # ... and so are messages with more links than this
    join_wave_joins = 10       # joins per room ...
    join_wave_seconds = 60     # ... per this many seconds
    media_first_message = false  # true: a sender's first message in a room may not be media
    policy_lists = []          # list rooms (ids or aliases) whose m.ban rules apply
    audit_kept = 1000          # newest decisions kept in the audit log
    management_room = "#mod:example.org"  # room whose members give !policy commands
    admin_token = "..."        # the admin routes' bearer token (16+ characters; unset: no
                               # routes), at /_servletkit/plugins/policy_server/ on [server]

    [[plugins.policy_server.communities]]  # rules of some rooms, overriding the above
    rooms = ["!room:example.org"]          # room ids (each in one community at most)
    blocked_words = ["eggs"]               # any rule key above (dry_run_rules included)
    dry_run = true                         # its rooms only log (the rest stays enforced)

A mistake raises :class:`PolicyConfigError` naming the key, which fails
``servlet_init``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from servletkit_policy_server.rules import BlockedWords, EventSize, Links, MaxMentions, Rule
from servletkit_policy_server.stored_rules import Flood, JoinWave, MediaFirst, StoredRule

RULE_NAMES = ("blocked_words", "max_mentions", "links", "event_size", "flood", "join_wave",
              "media_first", "policy_list")
KNOWN_KEYS = frozenset({"dry_run", "dry_run_rules", "blocked_words", "blocked_patterns",
                        "max_mentions", "flood_messages", "flood_seconds",
                        "flood_room_messages", "max_event_bytes", "policy_lists",
                        "audit_kept", "management_room", "admin_token",
                        "blocked_link_domains", "max_links", "join_wave_joins",
                        "join_wave_seconds", "media_first_message", "communities"})
RULE_KEYS = KNOWN_KEYS - {"dry_run", "policy_lists", "audit_kept", "management_room",
                          "admin_token", "communities"}
"""The keys a community may set for its rooms."""


class PolicyConfigError(ValueError):
    """A mistake in ``[plugins.policy_server]``; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"[plugins.policy_server] {key}: {problem}")
        self.key = key
        self.problem = problem


@attrs.frozen
class Settings:
    """What the config asks for: the content rules (checked in order), the stored rules
    (after them: they count what the others let through, in the store), the list rooms."""

    rules: tuple[Rule, ...]
    policy_lists: tuple[str, ...]
    dry_run: bool
    """Refuse nothing: the whole plugin's as configured (the toggle in the store overrides
    it), or a community's in its rooms (every rule of the community is in dry run then)."""
    policy_list_dry_run: bool
    stored: tuple[StoredRule, ...] = ()
    audit_kept: int = 1000
    management_room: str | None = None
    admin_token: str = attrs.field(default="", repr=False)
    communities: Mapping[str, Settings] = attrs.field(factory=dict)
    """Room id → the rules of its community (``rules``, ``stored``, ``policy_list_dry_run``
    of those rooms); other rooms have the rules above."""
    rooms: tuple[str, ...] = ()
    """A community's rooms (empty in the global settings)."""
    overrides: Mapping[str, Any] = attrs.field(factory=dict)
    """A community's own keys, those that replace the global ones in its rooms."""

    def of_room(self, room_id: str) -> Settings:
        """The settings whose rules apply in ``room_id``."""
        return self.communities.get(room_id, self)

    def each_community(self) -> list[Settings]:
        """Every community's settings once, in the config's order."""
        return list({settings.rooms: settings for settings in self.communities.values()}.values())


def _communities(config: Mapping[str, Any], clock: Callable[[], float] | None,
                 ) -> dict[str, Settings]:
    tables = config.get("communities", [])
    if not isinstance(tables, list) or not all(isinstance(t, Mapping) for t in tables):
        raise PolicyConfigError("communities", "must be an array of tables "
                                               "([[plugins.policy_server.communities]])")
    found: dict[str, Settings] = {}
    defaults = {key: value for key, value in config.items() if key in RULE_KEYS}
    for number, table in enumerate(tables):
        where = f"communities[{number}]"
        rooms = table.get("rooms")
        if not isinstance(rooms, list) or not rooms or not all(
                isinstance(room, str) and room.startswith("!") for room in rooms):
            raise PolicyConfigError(f"{where}.rooms", "must be a non-empty list of room ids "
                                                      f"(!id:server), not {rooms!r}")
        if unknown := sorted(set(table) - RULE_KEYS - {"rooms", "dry_run"}):
            raise PolicyConfigError(f"{where}.{unknown[0]}", "not a rule key (a community may "
                                    f"set: rooms, dry_run, {', '.join(sorted(RULE_KEYS))})")
        own = {key: value for key, value in table.items() if key != "rooms"}
        # a community in dry run: each of its rules is (there is no toggle of its own)
        every_rule = {"dry_run_rules": list(RULE_NAMES)} if own.get("dry_run") is True else {}
        try:
            settings = parse_settings(defaults | own | every_rule, clock,
                                      scope=f"community/{number}/")
        except PolicyConfigError as error:
            raise PolicyConfigError(f"{where}.{error.key}", error.problem) from None
        settings = attrs.evolve(settings, rooms=tuple(rooms), overrides=own)
        for room in rooms:
            if room in found:
                raise PolicyConfigError(f"{where}.rooms", f"{room} is in an earlier community "
                                                          "already")
            found[room] = settings
    return found


def _strings(config: Mapping[str, Any], key: str) -> list[str]:
    value = config.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyConfigError(key, f"must be a list of non-empty strings, not {value!r}")
    return value


def _positive(config: Mapping[str, Any], key: str, kind: type = int) -> Any:
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) \
            or value <= 0:
        noun = "number" if kind is float else "integer"
        raise PolicyConfigError(key, f"must be a positive {noun}, not {value!r}")
    return value


def parse_settings(config: Mapping[str, Any],
                   clock: Callable[[], float] | None = None, scope: str = "") -> Settings:
    """Check ``config`` and build its rules; raise :class:`PolicyConfigError` on a mistake.
    ``scope`` goes before the store keys of the counting rules (a community's own)."""
    if "admin_port" in config:
        raise PolicyConfigError("admin_port", "no longer used: the admin route is served by "
                                "the container at /_servletkit/plugins/policy_server/ on its "
                                "[server] listener; remove admin_port, keep admin_token")
    unknown = sorted(set(config) - KNOWN_KEYS)
    if unknown:
        raise PolicyConfigError(unknown[0], f"unknown key (known: {', '.join(sorted(KNOWN_KEYS))})")
    dry_run = config.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise PolicyConfigError("dry_run", f"must be true or false, not {dry_run!r}")
    dry_rules = set(_strings(config, "dry_run_rules"))
    if dry_rules - set(RULE_NAMES):
        wrong = sorted(dry_rules - set(RULE_NAMES))[0]
        raise PolicyConfigError("dry_run_rules",
                                f"unknown rule {wrong!r} (rules: {', '.join(RULE_NAMES)})")
    rules: list[Rule] = []
    words, patterns = _strings(config, "blocked_words"), _strings(config, "blocked_patterns")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            raise PolicyConfigError("blocked_patterns", f"{pattern!r} is no regular expression: "
                                                        f"{error}") from None
    if words or patterns:
        rules.append(BlockedWords(words, patterns, "blocked_words" in dry_rules))
    if (limit := _positive(config, "max_mentions")) is not None:
        rules.append(MaxMentions(limit, "max_mentions" in dry_rules))
    messages = _positive(config, "flood_messages")
    seconds = _positive(config, "flood_seconds", float)
    room_messages = _positive(config, "flood_room_messages")
    if (messages is None and room_messages is not None) or (seconds is None) != (messages is None):
        raise PolicyConfigError("flood_seconds" if seconds is None else "flood_messages",
                                "flood_messages and flood_seconds go together")
    extra: dict[str, Any] = {"scope": scope} | ({"clock": clock} if clock is not None else {})
    stored: list[StoredRule] = []
    if messages is not None:
        stored.append(Flood(messages, float(seconds), room_messages, "flood" in dry_rules,
                            **extra))
    joins, join_seconds = _positive(config, "join_wave_joins"), _positive(
        config, "join_wave_seconds", float)
    if (joins is None) != (join_seconds is None):
        raise PolicyConfigError("join_wave_seconds" if join_seconds is None else
                                "join_wave_joins", "join_wave_joins and join_wave_seconds "
                                                   "go together")
    if joins is not None:
        stored.append(JoinWave(joins, float(join_seconds), "join_wave" in dry_rules, **extra))
    media_first = config.get("media_first_message", False)
    if not isinstance(media_first, bool):
        raise PolicyConfigError("media_first_message", f"must be true or false, not "
                                                       f"{media_first!r}")
    if media_first:
        stored.append(MediaFirst("media_first" in dry_rules))
    domains, max_links = _strings(config, "blocked_link_domains"), _positive(config, "max_links")
    if domains or max_links is not None:
        rules.append(Links(domains, max_links, "links" in dry_rules))
    if (size := _positive(config, "max_event_bytes")) is not None:
        rules.append(EventSize(size, "event_size" in dry_rules))
    management_room = config.get("management_room")
    if management_room is not None and (not isinstance(management_room, str)
                                        or management_room[:1] not in ("!", "#")):
        raise PolicyConfigError("management_room",
                                f"must be a room id or alias, not {management_room!r}")
    admin_token = config.get("admin_token", "")
    if not isinstance(admin_token, str) or (admin_token and len(admin_token) < 16):
        raise PolicyConfigError("admin_token", "the admin route needs a token of at least 16 "
                                               "characters")
    return Settings(tuple(rules), tuple(_strings(config, "policy_lists")), dry_run,
                    "policy_list" in dry_rules, tuple(stored),
                    _positive(config, "audit_kept") or 1000, management_room or None,
                    admin_token, _communities(config, clock))
