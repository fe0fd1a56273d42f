"""Hook specifications: the reference for plugin authors.

Every hook receives ``context`` (a :class:`servletkit.PluginContext`),
the calling plugin's own view of the container: its config table, its logger,
and, where the container provides them, its storage and homeserver client.

Any hook may be written as ``def`` or ``async def``. A plugin implements the
hooks it needs, with the arguments it needs, by name::

    from servletkit import hookimpl, Veto

    @hookimpl
    def on_send_event(event):
        if "spam" in event.content.get("body", ""):
            return Veto("no spam here")

Two kinds of hooks:

* **Interception hooks** may return a decision: :class:`~servletkit.Allow`,
  :class:`~servletkit.Modify` or :class:`~servletkit.Veto`; ``None`` means
  "no opinion". The container runs them plugin by plugin in a defined order
  (config ``order``, then ``tryfirst``/``trylast``); each plugin sees the
  event as modified by the plugins before it, and the first ``Veto`` ends the
  chain. A plugin that raises or overruns its ``timeout_ms`` budget is treated
  according to its ``on_error`` policy (``"allow"``: no opinion; ``"deny"``: a
  Veto). Async implementations are cancelled at the budget; sync ones run on
  the event loop and cannot be interrupted, so a late answer is discarded.
* **Observation hooks** return nothing. They run concurrently, never delay a
  decision, and a failure in one is logged and affects nothing else.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from servletkit.hooks.table import (
    HookTable,
    ModuleCall,
    SynapseCallback,
    interception,
    lifecycle,
    observation,
    query,
)

if TYPE_CHECKING:
    from starlette.routing import BaseRoute
    from starlette.types import ASGIApp

    from servletkit.hooks.context import PluginContext
    from servletkit.hooks.decisions import Decision
    from servletkit.hooks.events import Ephemeral, Event

# -------------------------------------------------------------------------
# Lifecycle
# -------------------------------------------------------------------------


@lifecycle
def servlet_init(context: PluginContext) -> None:
    """Prepare the plugin before it receives its first event.

    Called once per loaded plugin, after its config is validated and before
    any event hook. Open connections and start background tasks here. Raising
    makes the container report the plugin as failed (with the traceback) and
    run without it.

    :param context: the plugin's context.
    """


@lifecycle
def servlet_destroy(context: PluginContext) -> None:
    """Release what :func:`servlet_init` acquired.

    Called once when the container stops, after the wires have stopped taking
    requests (the module wire lets in-flight requests finish first). No hook
    of this plugin is called afterwards; its ``context.store`` and
    ``context.homeserver`` are closed right after.

    :param context: the plugin's context.
    """


@lifecycle
def servlet_routes(context: PluginContext) -> Sequence[BaseRoute] | ASGIApp | None:
    """Give the HTTP routes the plugin serves under ``/_servletkit/plugins/NAME/``.

    Called once per loaded version, right after its :func:`servlet_init`
    (so the routes may use what init prepared). The routes are served on the
    container's ``[server]`` listener, their paths relative to the plugin's
    prefix: ``Route("/hook", ...)`` of plugin ``github`` answers
    ``/_servletkit/plugins/github/hook``. Provisioning APIs and webhooks go
    here. A reload swaps the new version's routes in at the same moment as its
    hooks (requests in flight finish on the old version, which is destroyed
    once they have); an undeploy takes them away. Requests that arrive while
    the container starts wait for the plugins' init. The container checks no
    token: a route guards itself. A path no route matches is answered 404
    ``M_UNRECOGNIZED``, a wrong method 405, an exception 500 ``M_UNKNOWN``
    (Matrix JSON errors). Raising, or answering anything else, fails the
    plugin's start (or reload) at the stage ``routes``, after its
    :func:`servlet_destroy` has run.

    :param context: the plugin's context.
    :returns: a list of Starlette routes (``Route``, ``Mount``,
        ``WebSocketRoute``), or any ASGI application (its own Starlette app,
        mounted as it is: its own error handlers answer, its lifespan is not
        run); ``None`` for no routes.
    """


# -------------------------------------------------------------------------
# Interception: the answer decides what happens
# -------------------------------------------------------------------------


@interception(modifiable=True, module=ModuleCall(
    "event", (("event", "event"),),
    (SynapseCallback("check_event_allowed", "third_party_rules"),
     # only remote events reach it here, and refusing one soft-fails and redacts it for
     # good: it fails open, as synapse-http-antispam does
     SynapseCallback("check_event_for_spam", "spam_checker", fail_open=True)),
))
def on_send_event(event: Event, context: PluginContext) -> Decision | None:
    """Decide on an event sent into a room: a message, a state event, a membership.

    Called for every event a user or bridge sends. Before it is stored
    (``event.stage == "before_store"``, the module wire) the decision takes
    effect directly; for an event from another server (also ``"before_store"``,
    when it arrives) a Veto soft-fails it, and a Modify is ignored and logged,
    because a signed event cannot change. After it is stored
    (``"after_store"``, the appservice wire) a Veto is enforced by redacting
    the event when ``[appservice] enforce_vetoes = "redact"``, and otherwise
    only recorded in the audit log; a Modify cannot change a stored event: it
    is recorded as not applied, and the plugins after this one see the
    modified content. On the policy wire (``event.wire == "policy"``) every
    server of a protected room asks before sending the event: a Veto refuses
    it for the whole room, its reason reaching the sender (with
    ``M_FORBIDDEN``, the spec's errcode for a policy refusal).

    :param event: the event, as modified by the plugins before this one.
    :param context: the plugin's context.
    :returns: ``Allow()``; ``Modify(content=...)`` to replace the event's
        content (refused on the policy wire, where events cannot change);
        ``Veto(reason, errcode)``, whose errcode and reason the sender sees;
        or ``None`` for no opinion.
    """


@interception(module=ModuleCall(
    "join", (("user_id", "str"), ("room_id", "str")),
    (SynapseCallback("user_may_join_room", "spam_checker"),),
))
def on_join_room(user_id: str, room_id: str, context: PluginContext) -> Decision | None:
    """Decide whether a user may join a room.

    Module wire (Synapse's ``user_may_join_room``): a Veto's errcode and
    reason reach the client. Policy wire: a join event of a protected room
    that a server asks the policy server about (joins arriving over
    federation); a Veto refuses it for the whole room.

    Called before the homeserver creates the join, including joins by alias
    and joins after an invite; not for the creator's own join of a new room.

    :param user_id: the full Matrix user ID joining, e.g. ``@alice:example.org``.
    :param room_id: the room being joined.
    :param context: the plugin's context.
    :returns: ``Veto`` to refuse the join, ``Allow()`` or ``None`` to let it go
        on. ``Modify`` is a plugin error here.
    """


@interception(module=ModuleCall(
    "invite", (("inviter_id", "str"), ("invitee_id", "str"), ("room_id", "str")),
    (SynapseCallback("user_may_invite", "spam_checker"),),
))
def on_invite(
    inviter_id: str, invitee_id: str, room_id: str, context: PluginContext
) -> Decision | None:
    """Decide whether one user may invite another into a room.

    Module wire (Synapse's ``user_may_invite``); policy wire: an invite event
    of a protected room that a server asks the policy server about.

    :param inviter_id: the user sending the invite.
    :param invitee_id: the user being invited.
    :param room_id: the room.
    :param context: the plugin's context.
    :returns: ``Veto`` to refuse the invite, ``Allow()`` or ``None`` to let it
        go on. ``Modify`` is a plugin error here.
    """


@interception(module=ModuleCall(
    "create_room", (("user_id", "str"), ("request", "object")),
    (SynapseCallback("user_may_create_room", "spam_checker"),),
))
def on_create_room(
    user_id: str, request: Mapping[str, Any], context: PluginContext
) -> Decision | None:
    """Decide whether a user may create a room.

    Module wire only (Synapse's ``user_may_create_room``).

    :param user_id: the user creating the room.
    :param request: the ``/createRoom`` request body (name, preset, initial state …).
    :param context: the plugin's context.
    :returns: ``Veto`` to refuse, ``Allow()`` or ``None`` to let it go on.
        ``Modify`` is a plugin error here.
    """


@interception(module=ModuleCall(
    "connect", (("user_id", "str"), ("device_id", "optional_str")),
    (SynapseCallback("check_login_for_spam", "spam_checker"),),
))
def on_connect_event_stream(
    user_id: str, device_id: str | None, context: PluginContext
) -> Decision | None:
    """Decide whether a user's client may open a session with the event stream.

    On the module wire this is the homeserver's login check: a Veto refuses
    the login. On the appservice wire the user's presence going online is
    reported here after the fact, and the decision is only recorded.

    :param user_id: the user connecting.
    :param device_id: the client's device ID, when the homeserver knows it.
    :param context: the plugin's context.
    :returns: ``Veto`` to refuse the session, ``Allow()`` or ``None`` to let
        it go on. ``Modify`` is a plugin error here.
    """


# -------------------------------------------------------------------------
# Observation: the return value is ignored
# -------------------------------------------------------------------------


@observation
def on_stored_event(event: Event, context: PluginContext) -> None:
    """Observe an event the homeserver has stored.

    Called for every event the container hears after it is stored, in order
    within a room. The appservice wire deduplicates retried transactions and
    acknowledges one only after its hooks returned and ``context.store``
    writes made during them are committed with the transaction id: store-backed
    effects happen exactly once. If the container dies before that commit, the
    homeserver resends the transaction and the hook sees its events again, so
    effects outside the store (messages sent, calls to other services) should
    be idempotent, e.g. keyed by ``event.event_id``. Bridges relay from here.

    :param event: the stored event (``event.stage == "after_store"``).
    :param context: the plugin's context.
    """


@observation
def on_ephemeral(data: Ephemeral, context: PluginContext) -> None:
    """Observe data that is not stored in room history.

    Typing notifications, read receipts, presence, and to-device messages
    addressed to the container's users.

    :param data: the ephemeral data.
    :param context: the plugin's context.
    """


# -------------------------------------------------------------------------
# Queries: the homeserver asks whether something exists (appservice wire)
# -------------------------------------------------------------------------


@query
def on_query_user(user_id: str, context: PluginContext) -> bool | None:
    """Say whether a user in the appservice's namespace exists, creating it if it should.

    Called when the homeserver meets an unknown user ID in the appservice's
    user namespace (a client looks up its profile, invites it, messages it)
    and asks the appservice, before answering its client. A bridge registers
    the virtual user here (``await context.homeserver.register(localpart)``),
    sets its profile, and returns ``True``. Plugins are asked in chain order;
    the first ``True`` wins and the rest are not asked. The homeserver waits
    for the answer, so keep it within the plugin's ``timeout_ms``.

    :param user_id: the full Matrix user ID asked about, e.g. ``@_xmpp_romeo:example.org``.
    :param context: the plugin's context.
    :returns: ``True`` if the user exists now (the homeserver is told ``200``);
        ``False`` or ``None`` if this plugin does not provide it. If no
        plugin returns ``True`` the homeserver is told the user does not exist.
    """


@query
def on_query_alias(alias: str, context: PluginContext) -> bool | None:
    """Say whether an alias in the appservice's namespace exists, creating the room if it should.

    Called when a client resolves or joins an alias in the appservice's alias
    namespace that the homeserver does not know. A bridge creates the room
    with that alias here (``await context.homeserver.create_room(alias_localpart=...)``)
    and returns ``True``; the homeserver then resolves the alias and the client
    joins. The first ``True`` wins; the homeserver waits for the answer.

    :param alias: the full room alias asked about, e.g. ``#_xmpp_lobby:example.org``.
    :param context: the plugin's context.
    :returns: ``True`` if the alias exists now; ``False`` or ``None`` if this
        plugin does not provide it. If no plugin returns ``True`` the
        homeserver is told the alias does not exist.
    """


@query
def on_thirdparty_protocol(protocol: str, context: PluginContext) -> Mapping[str, Any] | None:
    """Describe a third-party protocol the appservice bridges (``irc``, ``xmpp``, …).

    Called when a client asks the homeserver about the protocol. The first
    plugin answering something other than ``None`` wins.

    :param protocol: the protocol ID, as listed in ``[appservice] protocols``.
    :param context: the plugin's context.
    :returns: a Protocol object as the Matrix spec defines it (``user_fields``,
        ``location_fields``, ``icon``, ``field_types``, ``instances``), or
        ``None`` if this plugin does not bridge it (``404`` if nobody does).
    """


@query
def on_thirdparty_lookup(
    kind: str, protocol: str | None, fields: Mapping[str, str], context: PluginContext
) -> list[Mapping[str, Any]] | None:
    """Find third-party users or locations (rooms) for the homeserver.

    Called for the four third-party lookup endpoints. ``kind`` is ``"user"``
    or ``"location"``. A forward lookup names the ``protocol`` and gives its
    search ``fields`` (the query string); a reverse lookup has ``protocol``
    ``None`` and ``fields`` ``{"userid": ...}`` (users) or ``{"alias": ...}``
    (locations). The first plugin answering something other than ``None`` wins.

    :param kind: ``"user"`` or ``"location"``.
    :param protocol: the protocol ID, or ``None`` for a reverse lookup.
    :param fields: the search fields (strings).
    :param context: the plugin's context.
    :returns: a list of User objects (``userid``, ``protocol``, ``fields``) or
        Location objects (``alias``, ``protocol``, ``fields``), possibly empty;
        or ``None`` if this plugin has no opinion (``404`` if nobody answers).
    """


HOOKS: Final = HookTable.from_modules(sys.modules[__name__])
"""Every hook above with its facts; the tables below and the wires' tables derive from it."""

INTERCEPTION_HOOKS: Final = HOOKS.of_kind("interception")
"""Hooks whose answer is a decision, run as a chain by the dispatcher."""

MODIFIABLE_HOOKS: Final = HOOKS.modifiable
"""Interception hooks whose first argument is an event that ``Modify`` may change."""

OBSERVATION_HOOKS: Final = HOOKS.of_kind("observation")
"""Hooks whose return value is ignored, run concurrently by the dispatcher."""

QUERY_HOOKS: Final = HOOKS.of_kind("query")
"""Hooks that answer a question, asked plugin by plugin until one answers (first wins)."""

LIFECYCLE_HOOKS: Final = HOOKS.of_kind("lifecycle")
"""Hooks the container calls once per plugin instance."""
