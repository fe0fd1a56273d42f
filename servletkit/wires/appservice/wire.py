"""The appservice wire: the Matrix Application Service API (spec v1.19), served by the container.

The homeserver pushes every event it has stored in the appservice's namespaces
to ``PUT /_matrix/app/v1/transactions/{txnId}`` and asks about unknown users
and aliases; the container turns that into hook calls. Every request must
carry ``Authorization: Bearer <hs_token>`` (a legacy ``?access_token=`` is
accepted too; if both are given they must match).

**Exactly once.** A transaction is answered ``200`` only after it has been
*durably handed* to the plugins, which here means: every event of it went
through the ``on_send_event`` chain (``event.stage == "after_store"``) and the
``on_stored_event`` observers, every ephemeral item through ``on_ephemeral``,
every hook call has returned, vetoes have been enforced (``redact`` mode), and
then the transaction's record, the plugins' store writes made meanwhile and the
audit records were written in one commit (see :mod:`servletkit.store.units`).

A retry is answered ``200`` at once, also after a restart. A retry is the same
id with the same events (:func:`transaction_digest`; the homeserver drops
ephemeral data from retries, so that may differ). The same id with other
events is a *new* transaction: homeservers reuse ids (Synapse on SQLite numbers
them from 1 again after a restart, because the table it counts from is emptied
once transactions are delivered), so an id alone cannot tell. It is handled
like any other, and a warning says the homeserver's counter went back.
If the container dies before the commit, nothing of the transaction is recorded
and the homeserver resends it: the plugins see its events again, and their
store writes from the first attempt were never committed. Effects outside the
store (messages sent to Matrix, calls to other services) may happen twice in
that window; make them idempotent (e.g. a ``txn_id`` derived from the event id).

**Order.** Transactions are handled one at a time (a FIFO lock), in the order
their bodies have arrived (a homeserver sends one at a time). Within one, its
events go through the ``on_send_event`` chain in their order, then to the
``on_stored_event`` observers in their order (each event's observers finish
before the next event's start); so the events of a room reach every hook in
the homeserver's order.

**Decisions.** The events are already stored. ``Veto``: with ``[appservice]
enforce_vetoes = "redact"`` the event is redacted as the appservice user with
the veto's reason (a failed redaction is logged and audited, and does not
fail the transaction); with ``"observe"`` (the default) it is only recorded.
``Modify``: cannot change a stored event; it is recorded as not applied, and
the plugins later in the chain see the modified content, as on every wire.
``on_stored_event`` observers see the event as stored. Every decision goes
to the audit log.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from servletkit.hooks.decisions import Modify, Veto
from servletkit.hooks.events import Ephemeral, Event, EventFormatError
from servletkit.store import (
    AuditRecord,
    Batch,
    ProcessedTransaction,
    audit_record,
    record_decision,
    unit_of_work,
)
from servletkit.wires.appservice.malformed import Malformed
from servletkit.wires.appservice.slices import in_slices
from servletkit.wires.errors import MatrixError
from servletkit.wires.metrics import metrics_for

if TYPE_CHECKING:
    from servletkit.container.config import AppserviceConfig
    from servletkit.container.runtime import Container
    from servletkit.hooks.dispatcher import Outcome

log = logging.getLogger("servletkit.appservice")

PREFIX: Final = "/_matrix/app/v1"

_EPHEMERAL_KEYS: Final = ("ephemeral", "de.sorunome.msc2409.ephemeral")
_TO_DEVICE_KEYS: Final = ("to_device", "de.sorunome.msc2409.to_device")
_NOT_APPLIED: Final = "not applied: the event is already stored"
"""The audit detail of a Modify on this wire (the homeserver stored the event before)."""


def _ok() -> Response:
    return Response(b"{}", media_type="application/json")


def _first_present(data: dict[str, Any], keys: tuple[str, ...]) -> list[Any]:
    """The value of the first of ``keys`` in ``data`` (stable name before unstable), as a list."""
    for key in keys:
        value = data.get(key)
        if value is None:
            continue
        if type(value) is not list:
            raise MatrixError(400, "M_BAD_JSON",
                              f"'{key}' must be an array, got {type(value).__name__}")
        return value
    return []


def transaction_digest(events: list[Any], ephemeral: list[Any]) -> str:
    """What identifies a transaction's content, to tell a retry from a reused id.

    The event ids, in order, when it has events: a retry carries the same
    events, but not always the same ephemeral data. Without events, the
    ephemeral data itself (a retry of such a transaction from Synapse carries
    none, and so has nothing to deliver either).
    """
    if events:
        try:  # every item an object, as a homeserver sends them: the ids in one C loop
            ids = list(map(dict.get, events, repeat("event_id")))
        except TypeError:
            ids = [raw.get("event_id") if type(raw) is dict else None for raw in events]
        identity = orjson.dumps(ids)
    else:
        identity = orjson.dumps(ephemeral, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(identity, digest_size=16).hexdigest()


class AppserviceWire:
    """The Application Service API routes of one container, and their state.

    Requests that need the plugins wait until their ``servlet_init`` has run
    (the homeserver may push a transaction the moment the container listens).
    """

    name: Final = "appservice"
    honours_modify: Final = False

    def __init__(self, container: Container, config: AppserviceConfig) -> None:
        self._container = container
        self._config = config
        self._store = container.store
        self._hs_token = config.hs_token.encode()
        self._lock = asyncio.Lock()
        # users online, the one seen longest ago first; at most presence_kept
        self._online: OrderedDict[str, None] = OrderedDict()
        self._counter_went_back = False
        self._metrics = metrics_for(container)
        self._queued = 0  # transactions received, not yet answered (but retries while queued)
        if self._metrics is not None:
            self._metrics.count_queued(self.name, lambda: self._queued)

    def lifespan(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Nothing of its own runs: it is all routes."""
        return contextlib.nullcontext()

    async def settled(self, timeout_s: float) -> None:
        """At once: the homeserver connects per request."""

    async def _plugins_ready(self) -> None:
        ready = self._container.ready
        if not ready.is_set():
            await ready.wait()

    def routes(self) -> list[BaseRoute]:
        """The routes under ``/_matrix/app/v1``."""
        p = PREFIX
        return [
            Route(f"{p}/transactions/{{txn_id}}", self.put_transaction, methods=["PUT"]),
            # `path`: an identifier may contain '/' (an alias localpart may), sent
            # percent-encoded and decoded before routing; it is all the identifier
            Route(f"{p}/users/{{user_id:path}}", self.query_user, methods=["GET"]),
            Route(f"{p}/rooms/{{alias:path}}", self.query_alias, methods=["GET"]),
            Route(f"{p}/ping", self.ping, methods=["POST"]),
            Route(f"{p}/thirdparty/protocol/{{protocol}}", self.thirdparty_protocol,
                  methods=["GET"]),
            Route(f"{p}/thirdparty/user/{{protocol}}", self.thirdparty_lookup, methods=["GET"]),
            Route(f"{p}/thirdparty/location/{{protocol}}", self.thirdparty_lookup,
                  methods=["GET"]),
            Route(f"{p}/thirdparty/user", self.thirdparty_reverse, methods=["GET"]),
            Route(f"{p}/thirdparty/location", self.thirdparty_reverse, methods=["GET"]),
        ]

    # -- requests ------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        """Check the hs_token: missing → 401 ``M_MISSING_TOKEN``; wrong → 403 ``M_FORBIDDEN``."""
        header = request.headers.get("authorization")
        query = request.query_params.get("access_token")
        token = None
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                token = value.strip()
        if token is None and query is None:
            raise MatrixError(401, "M_MISSING_TOKEN",
                              "Missing hs_token: expected the header 'Authorization: Bearer "
                              "<hs_token>' from the homeserver's registration")
        if query is not None and token is not None and query != token:
            raise MatrixError(403, "M_FORBIDDEN",
                              "The Authorization header and the access_token parameter differ")
        given = (token if token is not None else query or "").encode()
        if not hmac.compare_digest(given, self._hs_token):
            raise MatrixError(403, "M_FORBIDDEN",
                              "Wrong hs_token: it does not match the appservice registration")

    async def _read_json(self, request: Request) -> Any:
        """The body as JSON: over the limit → 413 ``M_TOO_LARGE``; not JSON → 400 ``M_NOT_JSON``;
        not all there within ``body_timeout_s`` → 408 ``M_UNKNOWN``."""
        limit = self._config.max_transaction_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise self._too_large(int(length))
        chunks = []
        size = 0
        timeout_s = self._config.body_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise self._too_large(size)
                    chunks.append(chunk)
        except TimeoutError:
            raise MatrixError(408, "M_UNKNOWN", f"The body did not arrive within {timeout_s:g} "
                              f"s ([appservice] body_timeout_s); {size} bytes came") from None
        try:
            return orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError as exc:
            raise MatrixError(400, "M_NOT_JSON", f"The body is not valid JSON: {exc}") from None

    def _too_large(self, size: int) -> MatrixError:
        limit = self._config.max_transaction_bytes
        return MatrixError(413, "M_TOO_LARGE",
                           f"The body has {size} bytes or more; the limit is {limit} "
                           f"([appservice] max_transaction_bytes)")

    # -- transactions --------------------------------------------------------

    async def put_transaction(self, request: Request) -> Response:
        """``PUT /transactions/{txnId}``: deliver the events once, then acknowledge."""
        self._authorize(request)
        txn_id = request.path_params["txn_id"]
        data = await self._read_json(request)
        if type(data) is not dict:
            raise MatrixError(400, "M_BAD_JSON", "The transaction must be a JSON object, got "
                              f"{type(data).__name__}")
        events = data.get("events")
        if type(events) is not list:
            raise MatrixError(400, "M_BAD_JSON",
                              "The transaction needs 'events', an array of client events")
        ephemeral = _first_present(data, _EPHEMERAL_KEYS) + _first_present(data, _TO_DEVICE_KEYS)
        digest = transaction_digest(events, ephemeral)
        store = self._store
        # a retry while other transactions are queued is answered without waiting for them;
        # with none queued, the check under the lock below is the only store read
        if self._lock.locked() and await store.processed_digest(txn_id) == digest:
            self._count("retry")
            return _ok()
        self._queued += 1
        try:
            await self._plugins_ready()
            # one transaction at a time here, and among the instances sharing the store
            async with self._lock, store.exclusive("servletkit.appservice.transactions"):
                if await self._is_retry(txn_id, digest):  # or of an attempt that just finished
                    self._count("retry")
                    return _ok()
                batch = Batch()
                with unit_of_work(batch):
                    if events:
                        await self._deliver_events(txn_id, events, batch)
                    if ephemeral:
                        await self._deliver_ephemeral(txn_id, ephemeral, batch)
                await store.commit(batch, ProcessedTransaction(txn_id, digest))
        finally:
            self._queued -= 1
        self._count("transaction", events)
        return _ok()

    async def _is_retry(self, txn_id: str, digest: str) -> bool:
        """Whether ``txn_id`` was handled with this content; warn when its id is reused."""
        recorded = await self._store.processed_digest(txn_id)
        if recorded == digest:
            return True
        if recorded is None:
            self._counter_went_back = False
        elif not self._counter_went_back:  # once per run of reused ids, not per transaction
            self._counter_went_back = True
            log.warning("transaction %.64s has the id of an earlier transaction but other "
                        "events: the homeserver's transaction counter went back (Synapse on "
                        "SQLite restarts it after a restart); handling it as new", txn_id)
        return False

    async def _deliver_events(self, txn_id: str, events: list[Any], batch: Batch) -> None:
        dispatcher = self._container.dispatcher
        intercepting = bool(dispatcher.chain("on_send_event"))
        observing = bool(dispatcher.chain("on_stored_event"))
        if not (intercepting or observing):
            return  # no plugin wants events: do not even build them
        built = []
        malformed = Malformed("events")
        index = 0
        async for items in in_slices(events):
            for raw in items:
                try:
                    built.append(Event.from_json(raw))
                except EventFormatError as exc:
                    malformed.add(index, exc)
                index += 1
        malformed.log(txn_id)
        if intercepting:
            vetoed: list[tuple[Event, Outcome]] = []
            async for some in in_slices(built):
                for event in some:
                    outcome = await self._intercept("on_send_event", event)
                    if outcome.decision is not None:
                        detail = _NOT_APPLIED if type(outcome.decision) is Modify else None
                        batch.audit.append(audit_record(outcome, event.event_id,
                                                        event.room_id, detail, wire=self.name))
                        if outcome.vetoed and self._config.enforce_vetoes == "redact":
                            vetoed.append((event, outcome))
            if vetoed:
                records = await asyncio.gather(*(self._redact(event, outcome)
                                                 for event, outcome in vetoed))
                batch.audit.extend(records)
        if observing:
            async for some in in_slices(built):
                await dispatcher.observe_each("on_stored_event", some)

    async def _intercept(self, hook: str, *args: Any) -> Outcome:
        """The dispatcher's outcome, reported to the metrics when they are on."""
        metrics = self._metrics
        if metrics is None:
            return await self._container.dispatcher.intercept(hook, *args)
        started = time.perf_counter()
        outcome = await self._container.dispatcher.intercept(hook, *args)
        metrics.outcome(self.name, outcome, time.perf_counter() - started)
        return outcome

    def _count(self, kind: str, events: Sequence[Any] = ()) -> None:
        """A request of ``kind``; a committed transaction's ``events`` give its lag."""
        metrics = self._metrics
        if metrics is None:
            return
        metrics.requests.labels(self.name, kind).inc()
        stamps = [stamp for raw in events if type(raw) is dict
                  and type(stamp := raw.get("origin_server_ts")) is int]
        if stamps:
            metrics.lag.labels(self.name).observe(max(0.0, time.time() - min(stamps) / 1000))

    async def _redact(self, event: Event, outcome: Outcome) -> AuditRecord:
        """Carry out a Veto on a stored event: redact it as the appservice user."""
        assert isinstance(outcome.decision, Veto)
        reason = outcome.decision.reason
        homeserver = self._container.homeserver
        assert homeserver is not None  # internal invariant: [appservice] makes one
        try:
            # a txn_id derived from the event makes a redelivered veto one redaction
            await homeserver.redact(event.room_id, event.event_id, reason,
                                    txn_id=f"servletkit-veto-{event.event_id}")
        except Exception as exc:
            log.error("could not redact %s (vetoed by plugin %r): %s", event.event_id,
                      outcome.decided_by, exc)
            return AuditRecord(outcome.decided_by, "on_send_event", "redact_failed",
                               event.event_id, event.room_id, f"{reason} ({exc})")
        return AuditRecord(outcome.decided_by, "on_send_event", "redacted", event.event_id,
                           event.room_id, reason)

    async def _deliver_ephemeral(self, txn_id: str, items: list[Any], batch: Batch) -> None:
        dispatcher = self._container.dispatcher
        observing = bool(dispatcher.chain("on_ephemeral"))
        malformed = Malformed("ephemeral items")
        index = 0
        async for some in in_slices(items):
            for raw in some:
                index += 1
                try:
                    data = Ephemeral.from_json(raw)
                except EventFormatError as exc:
                    malformed.add(index - 1, exc)
                    continue
                if data.type == "m.presence" and data.sender is not None:
                    await self._presence(data, batch)
                if observing:
                    await dispatcher.observe("on_ephemeral", data)
        malformed.log(txn_id)

    async def _presence(self, data: Ephemeral, batch: Batch) -> None:
        """Report a user going online to ``on_connect_event_stream`` (decision recorded only)."""
        user_id = data.sender
        assert user_id is not None
        online = self._online
        if data.content.get("presence") != "online":
            online.pop(user_id, None)
            return
        if user_id in online:
            online.move_to_end(user_id)
            return
        online[user_id] = None
        if len(online) > self._config.presence_kept:
            online.popitem(last=False)
        outcome = await self._intercept("on_connect_event_stream", user_id, None)
        if outcome.decision is not None:
            batch.audit.append(audit_record(
                outcome, detail=f"{user_id} went online; recorded only (appservice wire)",
                wire=self.name))

    # -- queries -------------------------------------------------------------

    async def query_user(self, request: Request) -> Response:
        """``GET /users/{userId}``: 200 if a plugin provides the user, else 404."""
        self._authorize(request)
        return await self._query("on_query_user", request.path_params["user_id"])

    async def query_alias(self, request: Request) -> Response:
        """``GET /rooms/{roomAlias}``: 200 if a plugin provides the alias, else 404."""
        self._authorize(request)
        return await self._query("on_query_alias", request.path_params["alias"])

    async def _query(self, hook: str, subject: str) -> Response:
        if not subject:
            raise MatrixError(404, "M_NOT_FOUND", "No identifier in the path")
        await self._plugins_ready()
        plugin, _ = await self._container.dispatcher.first_answer(
            hook, subject, accept=lambda answer: answer is True
        )
        if plugin is None:
            raise MatrixError(404, "M_NOT_FOUND", f"No plugin provides {subject}")
        await record_decision(self._store, AuditRecord(plugin, hook, "exists", detail=subject))
        return _ok()

    async def ping(self, request: Request) -> Response:
        """``POST /ping``: the homeserver checks it can reach the container."""
        self._authorize(request)
        data = await self._read_json(request)
        if type(data) is not dict or not isinstance(data.get("transaction_id"), str | None):
            raise MatrixError(400, "M_BAD_JSON",
                              "The ping body must be an object with an optional string "
                              "'transaction_id'")
        log.info("pinged by the homeserver (transaction_id %r)", data.get("transaction_id"))
        return _ok()

    async def thirdparty_protocol(self, request: Request) -> Response:
        """``GET /thirdparty/protocol/{protocol}``: the Protocol object a plugin gives."""
        self._authorize(request)
        protocol = request.path_params["protocol"]
        return await self._thirdparty("on_thirdparty_protocol", Mapping, protocol)

    async def thirdparty_lookup(self, request: Request) -> Response:
        """``GET /thirdparty/{user,location}/{protocol}``: search by the protocol's fields."""
        self._authorize(request)
        kind = "user" if "/thirdparty/user/" in request.url.path else "location"
        fields = {k: v for k, v in request.query_params.items() if k != "access_token"}
        return await self._thirdparty("on_thirdparty_lookup", list, kind,
                                      request.path_params["protocol"], fields)

    async def thirdparty_reverse(self, request: Request) -> Response:
        """``GET /thirdparty/user?userid=`` and ``/thirdparty/location?alias=``: reverse lookups."""
        self._authorize(request)
        kind, param = (("user", "userid") if request.url.path.endswith("/user")
                       else ("location", "alias"))
        value = request.query_params.get(param)
        if value is None:
            raise MatrixError(400, "M_MISSING_PARAM", f"Missing query parameter {param!r}")
        return await self._thirdparty("on_thirdparty_lookup", list, kind, None, {param: value})

    async def _thirdparty(self, hook: str, expected: type, *args: Any) -> Response:
        await self._plugins_ready()
        plugin, answer = await self._container.dispatcher.first_answer(hook, *args)
        if plugin is None:
            raise MatrixError(404, "M_NOT_FOUND", "No plugin knows this third-party entity")
        if not isinstance(answer, expected):
            log.error("plugin %r answered %s with %r; expected a %s", plugin, hook, answer,
                      expected.__name__)
            raise MatrixError(500, "M_UNKNOWN", f"Plugin {plugin!r} gave a malformed answer")
        return JSONResponse(answer)


def appservice_wire(container: Container) -> AppserviceWire | None:
    """The container's appservice wire, or ``None`` without an ``[appservice]`` section."""
    config = container.config.appservice
    return None if config is None else AppserviceWire(container, config)
