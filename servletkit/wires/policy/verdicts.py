"""The policy decision on one PDU: the plugins' interception hooks, then a signature or a refusal.

The same event asked twice (by several servers of a room, or a retry) gets
the same answer without running the plugins again: verdicts are cached by the
event's reference hash (its ID in room versions 3 and later), and concurrent
asks for one event share one run.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Final

import attrs
from signedjson.types import SigningKey
from unpaddedbase64 import encode_base64

from servletkit.hooks.decisions import Veto
from servletkit.hooks.dispatcher import Dispatcher
from servletkit.hooks.events import Event
from servletkit.wires.policy.keys import POLICY_KEY_ID
from servletkit.wires.policy.pdu import Identity, RoomVersion, identify

MAX_CACHED: Final = 10_000
"""How many verdicts are remembered (the oldest are forgotten first)."""


@attrs.frozen
class Verdict:
    """Sign (``signatures`` is the answer body) or refuse (``reason``, and who decided)."""

    signatures: Mapping[str, Mapping[str, str]] | None
    reason: str | None = None
    decided_by: str | None = None


class Judge:
    """Runs the hooks on PDUs and signs what they allow with the policy key."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        server_name: str,
        policy_key: SigningKey,
        ready: asyncio.Event | None = None,
        max_cached: int = MAX_CACHED,
    ) -> None:
        if f"{policy_key.alg}:{policy_key.version}" != POLICY_KEY_ID:
            raise ValueError(f"the policy key's ID must be {POLICY_KEY_ID}")
        self.dispatcher = dispatcher
        self.server_name = server_name
        self._key = policy_key
        self._ready = ready
        self._max = max_cached
        self._verdicts: OrderedDict[bytes, asyncio.Future[Verdict]] = OrderedDict()
        self.runs = 0  # how many times the plugins were asked (for tests and metrics)

    async def verdict(self, pdu: dict[str, Any], version: RoomVersion,
                      identity: Identity | None = None) -> Verdict:
        """The verdict on ``pdu`` (cached by reference hash; concurrent asks share a run).
        ``identity``: the PDU's, if the caller has it already."""
        identity = identity or identify(pdu, version)
        key = identity.reference_hash + version.identifier.encode()
        if (known := self._verdicts.get(key)) is not None:
            self._verdicts.move_to_end(key)
            return await asyncio.shield(known)
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._verdicts[key] = future
        if len(self._verdicts) > self._max:
            self._verdicts.popitem(last=False)
        try:
            verdict = await self._judge(pdu, identity)
        except BaseException as exc:
            self._verdicts.pop(key, None)  # not cached: the next ask runs the plugins again
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # retrieved: the askers waiting on it get it
            raise
        future.set_result(verdict)
        return verdict

    async def _judge(self, pdu: dict[str, Any], identity: Identity) -> Verdict:
        if self._ready is not None and not self._ready.is_set():
            await self._ready.wait()
        self.runs += 1
        outcome = await self._ask(pdu, identity.event_id)
        if type(outcome.decision) is Veto:
            return Verdict(None, outcome.decision.reason, outcome.decided_by)
        return Verdict(self.signature(identity), None, outcome.decided_by)

    def _ask(self, pdu: dict[str, Any], event_id: str) -> Any:
        """The interception hook for this PDU: a join or an invite has its own; anything
        else (messages, state, other memberships) is ``on_send_event``."""
        intercept = self.dispatcher.intercept
        room_id = pdu["room_id"]
        if pdu["type"] == "m.room.member" and isinstance(pdu.get("state_key"), str):
            membership = pdu["content"].get("membership")
            if membership == "join":
                return intercept("on_join_room", pdu["state_key"], room_id, modify=False)
            if membership == "invite":
                return intercept("on_invite", pdu["sender"], pdu["state_key"], room_id,
                                 modify=False)
        event = Event.from_json({**pdu, "event_id": event_id}, wire="policy")
        coroutine: Any = intercept("on_send_event", event, modify=False)
        return coroutine

    def sign(self, pdu: Mapping[str, Any], version: RoomVersion) -> dict[str, dict[str, str]]:
        """The policy signature over the redacted ``pdu``: ``{server_name: {key_id: sig}}``."""
        return self.signature(identify(pdu, version))

    def signature(self, identity: Identity) -> dict[str, dict[str, str]]:
        """The policy signature of an identified event. It covers the same canonical JSON
        as its reference hash (the redacted event without signatures), so that encoding
        is reused: what ``signedjson.sign_json`` would sign, signed with its key."""
        signature = encode_base64(self._key.sign(identity.redacted_json).signature)
        return {self.server_name: {POLICY_KEY_ID: signature}}
