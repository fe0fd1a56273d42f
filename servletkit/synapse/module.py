"""``ServletkitModule``: Synapse's callbacks, forwarded to the container's plugins.

Which Synapse callback runs which hook, and how the answer reaches the client
(Synapse 1.163.2, checked in its source):

==========================  ==========================  ==================================
Synapse callback            hook (op)                   Veto / Modify
==========================  ==========================  ==================================
``check_event_allowed``     ``on_send_event`` (event)   every event a local user sends,
                                                        state and membership included.
                                                        Veto: ``SynapseError(403, reason,
                                                        errcode)``, passed to the client as
                                                        is. Modify: the replacement event
                                                        (``event.get_dict()`` with the new
                                                        content), which Synapse stores and
                                                        sends to everyone.
``check_event_for_spam``    ``on_send_event`` (event)   events from other servers only
                                                        (local ones were decided a moment
                                                        earlier in ``check_event_allowed``:
                                                        one round trip per event). Veto:
                                                        Synapse soft-fails and redacts it.
                                                        Modify cannot apply (the event is
                                                        signed by its server): logged,
                                                        event kept.
``user_may_join_room``      ``on_join_room`` (join)     Veto: 403 with errcode and reason.
``user_may_invite``         ``on_invite`` (invite)      Veto: 403 with errcode and reason.
``user_may_create_room``    ``on_create_room``          Veto: 403 with errcode and reason.
``check_login_for_spam``    ``on_connect_event_stream`` Veto: the login is refused, 403
                                                        with errcode and reason.
==========================  ==========================  ==================================

A join or invite is two hooks (the action, then its membership event), answered
in one round trip: the action's request carries the membership event Synapse will
build, and the event's answer waits for ``check_event_allowed``
(:mod:`servletkit.synapse.forecast`); a message is one round trip.

When the container cannot answer in time (down, slow, garbage) the callback's
policy applies (:mod:`servletkit.synapse.settings`; with several instances in
``containers``, the next instance is asked first, :mod:`servletkit.synapse.failover`):
``fail_open`` lets the action through; otherwise the client gets ``503 M_UNKNOWN`` ("try again"),
and a remote event is soft-failed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

import attrs
from synapse.module_api import NOT_SPAM, EventBase, ModuleApi, UserID, make_deferred_yieldable
from synapse.module_api.errors import Codes, ConfigError, SynapseError
from twisted.internet import defer, reactor

from servletkit.hooks.decisions import Allow, Modify, Veto
from servletkit.hooks.specs import HOOKS
from servletkit.synapse.failover import Containers
from servletkit.synapse.forecast import Forecasts, forecast_event
from servletkit.synapse.settings import ModuleSettings, SettingsError, parse_settings
from servletkit.throttle import Throttle

log = logging.getLogger("servletkit.synapse")

_reactor: Any = reactor
"""Twisted's global reactor (typed through zope interfaces that mypy cannot read)."""

UNAVAILABLE_STATUS: Final = 503
VETO_STATUS: Final = 403
FAILURE_LOG_INTERVAL_S: Final = 10.0


@attrs.frozen
class Unanswered:
    """The container gave no usable answer; ``reason`` says why."""

    reason: str


Answer = Allow | Modify | Veto | Unanswered


def read_answer(message: Mapping[str, Any]) -> Answer:
    """Turn an answer frame into a decision (anything malformed is :class:`Unanswered`)."""
    if "veto" in message:
        veto = message["veto"]
        if (isinstance(veto, Mapping) and isinstance(veto.get("errcode"), str)
                and isinstance(veto.get("reason"), str)):
            return Veto(veto["reason"], veto["errcode"])
        return Unanswered(f"malformed veto {veto!r:.200}")
    if "modify" in message:
        content = message["modify"]
        if isinstance(content, Mapping):
            return Modify(content)
        return Unanswered(f"malformed modify {content!r:.200}")
    if "error" in message:
        return Unanswered(f"the container refused the request: {message['error']!r:.300}")
    return Allow()


def client_event(event: EventBase) -> dict[str, Any]:
    """The event as the container's hooks see it (the client-server format)."""
    data = {
        "event_id": event.event_id,
        "room_id": event.room_id,
        "type": event.type,
        "sender": event.sender,
        "content": event.content,
        "origin_server_ts": event.origin_server_ts,
        "unsigned": {},
    }
    if event.is_state():
        data["state_key"] = event.state_key
    redacts = event.redacts  # not event.get("redacts"): 10 us on Synapse's Rust event
    if redacts is not None:
        data["redacts"] = redacts
    return data


class ServletkitModule:
    """The Synapse module: ``module: servletkit.synapse.ServletkitModule`` in homeserver.yaml.

    Its ``config`` is described in :mod:`servletkit.synapse.settings`;
    ``servletkit synapse-config`` prints a working entry.
    """

    def __init__(self, config: ModuleSettings, api: ModuleApi) -> None:
        self._api = api
        self._settings = config
        self._policies = config.policies
        self._client = Containers(reactor, config.addresses, config.secret)
        self._failures = Throttle(FAILURE_LOG_INTERVAL_S)
        self._forecasts = Forecasts()
        # each Synapse callback of the hook table: its op, and the method that adapts it
        self._ops: dict[str, str] = {}
        registries: dict[str, dict[str, Any]] = {"third_party_rules": {}, "spam_checker": {}}
        for name, (facts, callback) in HOOKS.synapse_callbacks.items():
            assert facts.module is not None  # internal invariant: synapse_callbacks has one
            self._ops[name] = facts.module.op
            registries[callback.registry][name] = getattr(self, name)
        api.register_third_party_rules_callbacks(**registries["third_party_rules"])
        api.register_spam_checker_callbacks(**registries["spam_checker"])
        _reactor.callWhenRunning(self._client.connect)
        _reactor.addSystemEventTrigger("before", "shutdown", self._client.stop)

    @staticmethod
    def parse_config(config: Any) -> ModuleSettings:
        """Synapse calls this at start-up; a bad config stops Synapse with the reason."""
        try:
            return parse_settings(config)
        except SettingsError as exc:
            raise ConfigError(f"servletkit.synapse.ServletkitModule: {exc}") from None

    # -- the callbacks -------------------------------------------------------

    async def check_event_allowed(
        self, event: EventBase, state_events: Any
    ) -> tuple[bool, dict[str, Any] | None]:
        """``on_send_event`` for an event a local user sends (see the module docstring)."""
        if not self._api.is_mine(event.sender):
            return True, None  # a remote knock: decided in check_event_for_spam on arrival
        forecast = None
        if event.type == "m.room.member" and self._forecasts:
            forecast = self._forecasts.take(event.sender, event.state_key, event.room_id,
                                            event.content)
        if forecast is not None:
            answer = self._read("check_event_allowed", forecast)
        else:
            answer = await self._ask("check_event_allowed", {"event": client_event(event)})
        if type(answer) is Modify:
            replacement = event.get_dict()
            replacement["content"] = dict(answer.content)
            return True, replacement
        self._enforce("check_event_allowed", answer)
        return True, None

    async def check_event_for_spam(self, event: EventBase) -> Any:
        """``on_send_event`` for an event from another server (see the module docstring)."""
        if self._api.is_mine(event.sender):
            return NOT_SPAM  # decided in check_event_allowed, moments ago
        answer = await self._ask("check_event_for_spam", {"event": client_event(event)})
        if type(answer) is Veto:
            log.info("servletkit: refused remote event %s: %s %s", event.event_id,
                     answer.errcode, answer.reason)
            return Codes.FORBIDDEN
        if type(answer) is Modify:
            log.warning("servletkit: a plugin modified remote event %s, which cannot change "
                        "(its server signed it); kept as it was", event.event_id)
        if type(answer) is Unanswered and not self._policies["check_event_for_spam"].fail_open:
            return Codes.FORBIDDEN
        return NOT_SPAM

    async def user_may_join_room(self, user_id: str, room_id: str, is_invited: bool) -> Any:
        """``on_join_room``, with the join event's ``on_send_event`` in the same round trip."""
        profile = await self._api.get_profile_for_user(UserID.from_string(user_id).localpart)
        member = forecast_event(user_id, user_id, room_id, "join", profile)
        await self._ask_with_event("user_may_join_room",
                                   {"user_id": user_id, "room_id": room_id}, member)
        return NOT_SPAM

    async def user_may_invite(self, inviter: str, invitee: str, room_id: str) -> Any:
        """``on_invite``, with the invite event's ``on_send_event`` in the same round trip
        when both users are local (a remote invitee's profile is not at hand)."""
        fields = {"inviter_id": inviter, "invitee_id": invitee, "room_id": room_id}
        if self._api.is_mine(inviter) and self._api.is_mine(invitee):
            profile = await self._api.get_profile_for_user(UserID.from_string(invitee).localpart)
            member = forecast_event(inviter, invitee, room_id, "invite", profile)
            await self._ask_with_event("user_may_invite", fields, member)
        else:
            self._enforce("user_may_invite", await self._ask("user_may_invite", fields))
        return NOT_SPAM

    async def user_may_create_room(self, user_id: str, room_config: dict[str, Any]) -> Any:
        """``on_create_room``; ``room_config`` is the ``/createRoom`` body."""
        answer = await self._ask("user_may_create_room",
                                 {"user_id": user_id, "request": room_config})
        self._enforce("user_may_create_room", answer)
        return NOT_SPAM

    async def check_login_for_spam(
        self, user_id: str, device_id: str | None, initial_display_name: str | None,
        request_info: Any, auth_provider_id: str | None = None,
    ) -> Any:
        """``on_connect_event_stream``: a user's client logs in."""
        answer = await self._ask("check_login_for_spam",
                                 {"user_id": user_id, "device_id": device_id})
        self._enforce("check_login_for_spam", answer)
        return NOT_SPAM

    # -- forwarding ----------------------------------------------------------

    async def _ask(self, callback: str, fields: dict[str, Any]) -> Answer:
        """The container's answer for one callback (its op's request with ``fields``),
        within the callback's budget."""
        return self._read(callback, await self._exchange(callback, fields))

    async def _ask_with_event(self, callback: str, fields: dict[str, Any],
                              member: dict[str, Any]) -> None:
        """Ask an action's callback and, in the same request, ``on_send_event`` for the
        forecast membership event ``member`` (kept for ``check_event_allowed``);
        enforce the action's answer."""
        fields["then"] = {"op": self._ops["check_event_allowed"], "event": member}
        message = await self._exchange(callback, fields)
        answer = self._read(callback, message)
        if not isinstance(message, Unanswered) and type(answer) is not Veto:
            then = message.get("then")
            if isinstance(then, Mapping) and "error" not in then:
                self._forecasts.expect(member, then)
        self._enforce(callback, answer)

    async def _exchange(self, callback: str,
                        fields: dict[str, Any]) -> Mapping[str, Any] | Unanswered:
        """The container's answer frame for one callback, within its budget."""
        timeout_s = self._policies[callback].timeout_s
        request = self._client.request(self._ops[callback], fields, timeout_s)
        try:
            message: dict[str, Any] = await make_deferred_yieldable(request)
        except defer.TimeoutError:
            return Unanswered(f"no answer within {timeout_s * 1000:g} ms")
        except Exception as exc:
            return Unanswered(str(exc) or type(exc).__name__)
        return message

    def _read(self, callback: str, message: Mapping[str, Any] | Unanswered) -> Answer:
        """The decision in an answer frame (a failure is reported)."""
        answer = message if isinstance(message, Unanswered) else read_answer(message)
        if type(answer) is Unanswered:
            self._report(callback, answer.reason)
        return answer

    def _enforce(self, callback: str, answer: Answer) -> None:
        """Raise the client-facing error for a Veto, or for a failure under fail-closed."""
        kind = type(answer)
        if kind is Veto:
            raise SynapseError(VETO_STATUS, answer.reason, answer.errcode)  # type: ignore[union-attr]
        if kind is Unanswered and not self._policies[callback].fail_open:
            raise SynapseError(
                UNAVAILABLE_STATUS,
                "The servletkit container that checks this request is unavailable; "
                "try again shortly",
                Codes.UNKNOWN,
            )

    def _report(self, callback: str, reason: str) -> None:
        """Log a failure, at most once per interval per callback (with a count)."""
        suppressed = self._failures.allow(callback)
        if suppressed is None:
            return
        effect = "let through" if self._policies[callback].fail_open else "refused"
        more = f" (and {suppressed} more since the last report)" if suppressed else ""
        log.warning("servletkit: %s not answered by the container: %s; %s (fail_open=%s)%s",
                    callback, reason, effect, self._policies[callback].fail_open, more)
