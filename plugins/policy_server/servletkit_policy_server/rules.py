"""Content rules: small objects with a name, each answering "why refuse this event?".

A rule's :meth:`Rule.check` returns the refusal's detail (a string) or ``None``.
The plugin turns a detail into ``Veto("<rule name>: <detail>")``, or, when the
rule (or the whole plugin) is in dry run, logs what would have been refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from servletkit import Event

LINK = re.compile(r"\bhttps?://([^/\s:?#\"'<>]+)[^\s\"'<>]*", re.IGNORECASE)
"""A link in text (or in an HTML attribute), capturing its host."""

USER_ID = re.compile(r"@[a-z0-9._=\-/+]+:[A-Za-z0-9.\-]+(?::\d+)?")


class Rule(Protocol):
    """A moderation rule: a ``name``, a ``dry_run`` flag and a ``check``."""

    name: str
    dry_run: bool

    def check(self, event: Event) -> str | None:
        """Why ``event`` breaks the rule, or ``None`` if it does not."""


def _texts(content: Mapping[str, Any]) -> list[str]:
    """The text fields of a message's content (``body``, ``formatted_body``)."""
    return [value for key in ("body", "formatted_body")
            if isinstance(value := content.get(key), str)]


class BlockedWords:
    """Refuse a message whose text holds a blocked word (whole word, any case) or regex match.

    ``words`` are plain words; ``patterns`` regular expressions. Both are
    compiled once, into a single regex.
    """

    name = "blocked_words"

    def __init__(self, words: Iterable[str], patterns: Iterable[str], dry_run: bool) -> None:
        alternatives = [rf"\b{re.escape(word)}\b" for word in words] + list(patterns)
        self.regex = re.compile("|".join(f"(?:{a})" for a in alternatives), re.IGNORECASE)
        self.dry_run = dry_run

    def check(self, event: Event) -> str | None:
        """The blocked text found in a message, if any."""
        if event.type != "m.room.message":
            return None
        for text in _texts(event.content):
            found = self.regex.search(text)
            if found:
                return f"the message contains blocked text {found.group(0)!r}"
        return None


class MaxMentions:
    """Refuse a message that mentions more than ``limit`` distinct users (or ``@room``)."""

    name = "max_mentions"

    def __init__(self, limit: int, dry_run: bool) -> None:
        self.limit = limit
        self.dry_run = dry_run

    def check(self, event: Event) -> str | None:
        """How many users the message mentions, when over the limit."""
        if event.type != "m.room.message":
            return None
        mentioned: set[str] = set()
        mentions = event.content.get("m.mentions")
        if isinstance(mentions, Mapping):
            ids = mentions.get("user_ids")
            if isinstance(ids, list):
                mentioned.update(i for i in ids if isinstance(i, str))
            if mentions.get("room") is True:
                mentioned.add("@room")
        for text in _texts(event.content):
            mentioned.update(USER_ID.findall(text))
        if len(mentioned) > self.limit:
            return f"the message mentions {len(mentioned)} users (at most {self.limit})"
        return None


class EventSize:
    """Refuse an event whose JSON is larger than ``max_bytes``."""

    name = "event_size"

    def __init__(self, max_bytes: int, dry_run: bool) -> None:
        self.max_bytes = max_bytes
        self.dry_run = dry_run

    def check(self, event: Event) -> str | None:
        """The event's size, when over the limit."""
        size = len(json.dumps(event.to_json(), separators=(",", ":")).encode())
        if size > self.max_bytes:
            return f"the event is {size} bytes (at most {self.max_bytes})"
        return None


class Links:
    """Refuse a message linking to a blocked domain (or a subdomain of one), or holding
    more than ``max_links`` links."""

    name = "links"

    def __init__(self, blocked_domains: Iterable[str], max_links: int | None,
                 dry_run: bool) -> None:
        self.blocked = frozenset(domain.lower().strip(".") for domain in blocked_domains)
        self.max_links = max_links
        self.dry_run = dry_run

    def _blocked(self, host: str) -> bool:
        labels = host.lower().strip(".").split(".")
        return any(".".join(labels[i:]) in self.blocked for i in range(len(labels)))

    def check(self, event: Event) -> str | None:
        """The blocked domain linked to, or the number of links when over the limit."""
        if event.type != "m.room.message":
            return None
        counted = 0  # distinct links of one text field (body and formatted_body repeat them)
        for text in _texts(event.content):
            links = {found.group(0): found.group(1) for found in LINK.finditer(text)}
            for host in links.values():
                if self._blocked(host):
                    return f"the message links to blocked domain {host!r}"
            counted = max(counted, len(links))
        if self.max_links is not None and counted > self.max_links:
            return f"the message has {counted} links (at most {self.max_links})"
        return None
