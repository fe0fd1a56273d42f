"""Matrix policy lists: parse rule events and answer "is this entity banned?" quickly.

A policy rule is a state event of a list room (``m.policy.rule.user``, ``.room``,
``.server``, and the legacy ``m.room.rule.*`` and ``org.matrix.mjolnir.rule.*``
types) whose content holds ``entity`` (a glob: ``*`` and ``?``),
``recommendation`` and ``reason``. Only ``m.ban`` (and its legacy spelling
``org.matrix.mjolnir.ban``) is enforced.

:class:`PolicyIndex` never scans every rule per lookup: exact entities sit in a
dict, and each glob is bucketed by its longest literal end (the characters
before its first wildcard, or after its last), so a lookup tries a handful of
dict keys (one per distinct bucket-key length, at most :data:`KEY_CAP` + 1 per
end) and matches only the globs in the buckets hit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs

Kind = Literal["user", "room", "server"]
KINDS: tuple[Kind, ...] = ("user", "room", "server")
RULE_TYPE_PREFIXES = ("m.policy.rule.", "m.room.rule.", "org.matrix.mjolnir.rule.")
BAN_RECOMMENDATIONS = frozenset({"m.ban", "org.matrix.mjolnir.ban"})
KEY_CAP = 12
"""Bucket keys are at most this many characters, which bounds the lookups per entity."""

SourceKey = tuple[str, str, str]
"""Where a rule comes from: (list room id, event type, state key)."""


def rule_kind(event_type: str) -> Kind | None:
    """The kind (``"user"``, ``"room"``, ``"server"``) of a policy rule event type, or ``None``."""
    for prefix in RULE_TYPE_PREFIXES:
        if event_type.startswith(prefix):
            kind = event_type[len(prefix):]
            if kind in KINDS:
                return kind
    return None


@attrs.frozen
class PolicyRule:
    """One ban from a policy list."""

    kind: Kind
    entity: str
    reason: str
    source: SourceKey

    @property
    def is_glob(self) -> bool:
        """Whether the entity has a wildcard."""
        return "*" in self.entity or "?" in self.entity


def parse_rule(room_id: str, event_type: str, state_key: str,
               content: Mapping[str, Any]) -> PolicyRule | None:
    """The ban a policy state event states, or ``None`` (not a rule, not a ban, or redacted)."""
    kind = rule_kind(event_type)
    entity = content.get("entity")
    if kind is None or not isinstance(entity, str) or not entity:
        return None
    if content.get("recommendation") not in BAN_RECOMMENDATIONS:
        return None
    reason = content.get("reason")
    return PolicyRule(kind, entity, reason if isinstance(reason, str) else "",
                      (room_id, event_type, state_key))


def glob_regex(glob: str) -> re.Pattern[str]:
    """A compiled regex matching exactly what the Matrix glob matches."""
    parts = (".*" if char == "*" else "." if char == "?" else re.escape(char) for char in glob)
    return re.compile("".join(parts), re.DOTALL)


def _literal_ends(glob: str) -> tuple[str, str]:
    """The literal text before the first wildcard and after the last one."""
    first = min(i for i in (glob.find("*"), glob.find("?")) if i >= 0)
    last = max(glob.rfind("*"), glob.rfind("?"))
    return glob[:first], glob[last + 1:]


class _GlobBuckets:
    """Globs of one kind, bucketed by a literal prefix or suffix."""

    def __init__(self) -> None:
        self.prefix: dict[str, dict[SourceKey, tuple[re.Pattern[str], PolicyRule]]] = {}
        self.suffix: dict[str, dict[SourceKey, tuple[re.Pattern[str], PolicyRule]]] = {}
        self.prefix_lengths: dict[int, int] = {}
        self.suffix_lengths: dict[int, int] = {}

    def _place(self, rule: PolicyRule) -> tuple[dict[str, Any], dict[int, int], str]:
        head, tail = _literal_ends(rule.entity)
        if len(tail) > len(head):
            return self.suffix, self.suffix_lengths, tail[-KEY_CAP:]
        return self.prefix, self.prefix_lengths, head[:KEY_CAP]

    def add(self, rule: PolicyRule) -> None:
        table, lengths, key = self._place(rule)
        bucket = table.setdefault(key, {})
        if rule.source not in bucket:
            lengths[len(key)] = lengths.get(len(key), 0) + 1
        bucket[rule.source] = (glob_regex(rule.entity), rule)

    def remove(self, rule: PolicyRule) -> None:
        table, lengths, key = self._place(rule)
        bucket = table.get(key)
        if bucket is None or bucket.pop(rule.source, None) is None:
            return
        if not bucket:
            del table[key]
        lengths[len(key)] -= 1
        if not lengths[len(key)]:
            del lengths[len(key)]

    def match(self, entity: str) -> PolicyRule | None:
        for length in self.prefix_lengths:
            bucket = self.prefix.get(entity[:length])
            if bucket:
                for regex, rule in bucket.values():
                    if regex.fullmatch(entity):
                        return rule
        for length in self.suffix_lengths:
            if length > len(entity):
                continue
            bucket = self.suffix.get(entity[len(entity) - length:])
            if bucket:
                for regex, rule in bucket.values():
                    if regex.fullmatch(entity):
                        return rule
        return None


class PolicyIndex:
    """Every ban of the followed lists, by kind, answering lookups without a scan."""

    def __init__(self) -> None:
        self._exact: dict[Kind, dict[str, dict[SourceKey, PolicyRule]]] = {k: {} for k in KINDS}
        self._globs: dict[Kind, _GlobBuckets] = {k: _GlobBuckets() for k in KINDS}
        self._by_source: dict[SourceKey, PolicyRule] = {}

    def __len__(self) -> int:
        return len(self._by_source)

    def rules(self) -> Iterable[PolicyRule]:
        """Every rule in the index."""
        return self._by_source.values()

    def set(self, source: SourceKey, rule: PolicyRule | None) -> None:
        """Make ``source`` state ``rule`` (``None``: the rule was removed or is no ban)."""
        old = self._by_source.pop(source, None)
        if old is not None:
            if old.is_glob:
                self._globs[old.kind].remove(old)
            else:
                entries = self._exact[old.kind].get(old.entity, {})
                entries.pop(source, None)
                if not entries:
                    self._exact[old.kind].pop(old.entity, None)
        if rule is None:
            return
        self._by_source[source] = rule
        if rule.is_glob:
            self._globs[rule.kind].add(rule)
        else:
            self._exact[rule.kind].setdefault(rule.entity, {})[source] = rule

    def apply_state(self, room_id: str, event: Mapping[str, Any]) -> bool:
        """Apply one state event (client JSON) of list room ``room_id``; whether it was a rule."""
        event_type, state_key = event.get("type"), event.get("state_key")
        if not isinstance(event_type, str) or not isinstance(state_key, str):
            return False
        if rule_kind(event_type) is None:
            return False
        content = event.get("content")
        rule = parse_rule(room_id, event_type, state_key,
                          content if isinstance(content, Mapping) else {})
        self.set((room_id, event_type, state_key), rule)
        return True

    def match(self, kind: Kind, entity: str) -> PolicyRule | None:
        """The ban matching ``entity`` of ``kind``, or ``None``."""
        exact = self._exact[kind].get(entity)
        if exact:
            return next(iter(exact.values()))
        return self._globs[kind].match(entity)

    def banned_user(self, user_id: str) -> PolicyRule | None:
        """The ban of ``user_id`` itself or of its server, or ``None``."""
        rule = self.match("user", user_id)
        if rule is None and ":" in user_id:
            rule = self.match("server", user_id.split(":", 1)[1])
        return rule
