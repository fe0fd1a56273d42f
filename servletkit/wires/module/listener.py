"""The module wire, container side: answers the Synapse module's callbacks.

``servletkit.synapse.ServletkitModule`` runs inside Synapse and forwards its
callbacks over one persistent TCP connection (the framed JSON protocol of
:mod:`servletkit.wires.module.protocol`). This module is the listener at the other
end: it checks the shared secret, turns each request into an interception
hook call (``event.stage == "before_store"``) and answers with the decision.
Every decision (not "no opinion") goes to the audit log, after its answer is sent.
Each connection's framing, hello and limits are in
:mod:`servletkit.wires.module.connection`.

Why a raw listener and not an HTTP route: the listener's own work for a
request is about 20 us (warm, measured in-process), against the 200 to 300 us
a request through uvicorn and Starlette costs (reference/module-wire-latency.md);
a round trip from a Twisted client is 120 to 170 us on loopback; and the Synapse
side writes one frame instead of running its general HTTP client (about 1 ms of
Synapse's CPU per request). See ``benchmarks/module_wire_latency.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs
from starlette.routing import BaseRoute

from servletkit.hooks.decisions import Modify, Veto
from servletkit.hooks.dispatcher import Dispatcher, Outcome
from servletkit.hooks.events import Event, EventFormatError
from servletkit.hooks.specs import HOOKS
from servletkit.hooks.table import FieldKind, HookTable
from servletkit.store import AuditRecord, Batch, Store, audit_record
from servletkit.wires.metrics import Metrics, metrics_for
from servletkit.wires.module.connection import ModuleConnection, encode, error_message

if TYPE_CHECKING:
    from servletkit.container.runtime import Container

log = logging.getLogger("servletkit.module_wire")

DRAIN_TIMEOUT_S: Final = 5.0
"""At shutdown, how long requests in flight may take to be answered before the
connections close (above the module's default 2 s budget per callback)."""


LIMIT_LOG_INTERVAL_S: Final = 10.0
"""Connections refused over ``[module] max_connections`` are logged at most this often."""


class BadRequest(ValueError):
    """A request whose fields are missing or of the wrong type."""


def _string(message: Mapping[str, Any], key: str) -> str:
    value = message.get(key)
    if not isinstance(value, str):
        raise BadRequest(f"{key}: must be a string, got {type(value).__name__}")
    return value


def _optional_string(message: Mapping[str, Any], key: str) -> str | None:
    return None if message.get(key) is None else _string(message, key)


def _object(message: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = message.get(key)
    if not isinstance(value, Mapping):
        raise BadRequest(f"{key}: must be an object, got {type(value).__name__}")
    return value


def _event(message: Mapping[str, Any], key: str) -> Event:
    try:
        return Event.from_json(message.get(key), wire="module")
    except EventFormatError as exc:
        raise BadRequest(f"{key}.{exc.field}: {exc.problem}") from None


_FIELD_READERS: Final[dict[FieldKind, Callable[[Mapping[str, Any], str], Any]]] = {
    "event": _event, "str": _string, "optional_str": _optional_string, "object": _object,
}
"""How a request field of each kind (:data:`~servletkit.hooks.table.FieldKind`) is read."""


@attrs.frozen
class Operation:
    """One module-wire op, ready to answer: its hook and how to read the hook's arguments."""

    hook: str
    readers: tuple[tuple[str, Callable[[Mapping[str, Any], str], Any]], ...]

    @classmethod
    def table(cls, hooks: HookTable) -> dict[str, Operation]:
        """Every op of the hook table → its :class:`Operation`."""
        return {
            op: cls(facts.name, tuple((name, _FIELD_READERS[kind])
                                      for name, kind in facts.module.fields))
            for op, facts in hooks.module_ops.items() if facts.module is not None
        }

    def arguments(self, message: Mapping[str, Any]) -> tuple[Any, ...]:
        """The hook's arguments from a request; :class:`BadRequest` names a wrong field."""
        return tuple(read(message, name) for name, read in self.readers)


def reply_for(request_id: int, outcome: Outcome) -> dict[str, Any]:
    """The answer frame for an interception outcome.

    Raises :class:`TypeError` for a decision the module could not apply (a Veto
    whose reason or errcode is not a string, a Modify whose content is not a mapping).
    """
    decision = outcome.decision
    if type(decision) is Veto:
        if type(decision.reason) is not str or type(decision.errcode) is not str:
            raise TypeError(f"Veto reason and errcode must be strings, got "
                            f"{type(decision.reason).__name__} and "
                            f"{type(decision.errcode).__name__}")
        return {"id": request_id, "veto": {"errcode": decision.errcode,
                                           "reason": decision.reason}}
    if type(decision) is Modify:
        if not isinstance(decision.content, Mapping):
            raise TypeError(f"Modify content must be a mapping, got "
                            f"{type(decision.content).__name__}")
        return {"id": request_id, "modify": decision.content}
    return {"id": request_id}


class ModuleWire:
    """Answers module requests with the container's dispatcher; owns the open connections.

    Until ``ready`` is set (the plugins' ``servlet_init`` is running), a request
    about one of the container's own users (``own_user``: the users the plugins
    act as) is answered by the plugins already live, so a plugin may join or
    create rooms during its init; any other request waits for ``ready``, so
    nothing gets in unchecked (Synapse applies the callback's failure policy
    if that takes longer than its budget).
    """

    name: Final = "module"
    honours_modify: Final = True

    def __init__(
        self,
        dispatcher: Dispatcher,
        secret: str,
        store: Store,
        hooks: HookTable = HOOKS,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ready: asyncio.Event | None = None,
        own_user: Callable[[str], bool] = lambda user_id: False,
        max_hello_bytes: int = 4096,
        max_connections: int = 64,
        metrics: Metrics | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self._secret = secret.encode()
        self._store = store
        self._ready = ready
        self._own_user = own_user
        self.host, self.port = host, port
        self.max_hello_bytes = max_hello_bytes
        self.max_connections = max_connections
        self._metrics = metrics
        if metrics is not None:
            metrics.count_connections(self.name, lambda: len(self.connections))
            metrics.count_queued(self.name, lambda: sum(len(connection.tasks)
                                                        for connection in self.connections))
        self._refused_at = -LIMIT_LOG_INTERVAL_S  # when a refused connection was last logged
        self._refused = 0  # connections refused since
        self._connected = asyncio.Event()  # set at the first module's hello
        self.operations = Operation.table(hooks)
        self.connections: set[ModuleConnection] = set()
        self._unwritten: list[AuditRecord] = []  # decided, not yet in the audit log
        self._writer: asyncio.Task[None] | None = None  # writes them

    def protocol(self) -> ModuleConnection:
        """A protocol instance for one new connection (the ``create_server`` factory)."""
        return ModuleConnection(self)

    def admit(self) -> bool:
        """Whether one more connection may open (logged at most every
        :data:`LIMIT_LOG_INTERVAL_S` when not, with a count)."""
        if len(self.connections) < self.max_connections:
            return True
        self._refused += 1
        now = asyncio.get_running_loop().time()
        if now - self._refused_at >= LIMIT_LOG_INTERVAL_S:
            log.warning("module wire: refused %d connections: %d are open ([module] "
                        "max_connections)", self._refused, len(self.connections))
            self._refused_at, self._refused = now, 0
        return False

    def authenticate(self, secret: Any) -> bool:
        """Whether ``secret`` is the shared secret (constant-time comparison)."""
        return isinstance(secret, str) and hmac.compare_digest(secret.encode(), self._secret)

    def operation(self, message: Mapping[str, Any]) -> Operation | None:
        """The :class:`Operation` of a request's ``op``, ``None`` if it names none."""
        op = message.get("op")
        return self.operations.get(op) if type(op) is str else None

    def then_operation(self, message: Mapping[str, Any]) -> Operation | None:
        """The :class:`Operation` of a request's ``then`` (the request answered with it),
        ``None`` without one or if it names no op."""
        then = message.get("then")
        return self.operation(then) if isinstance(then, Mapping) else None

    async def answer(self, message: Mapping[str, Any], operation: Operation | None) -> bytes:
        """The encoded answer frame to one request (``operation``: its op's, ``None`` if
        the op is unknown), with its ``then`` request's answer unless it refused.
        Never raises: every failure becomes an error frame."""
        if self._metrics is not None:  # by op: a round trip each, its then included
            self._metrics.requests.labels(self.name, operation.hook if operation else "?").inc()
        request_id = message.get("id")
        if type(request_id) is not int:
            return encode(error_message(None, "M_BAD_JSON", f"id: must be an integer, got "
                                 f"{request_id!r:.100}"))
        reply = await self._reply(request_id, message, operation)
        then = message.get("then")
        if then is not None and "veto" not in reply and "error" not in reply:
            if isinstance(then, Mapping) and "then" not in then:
                reply["then"] = await self._reply(request_id, then, self.operation(then))
            else:
                reply["then"] = error_message(request_id, "M_BAD_JSON", "then: must be a "
                                              "request object without a then of its own")
        return encode(reply)

    async def _reply(self, request_id: int, message: Mapping[str, Any],
                     operation: Operation | None) -> dict[str, Any]:
        """The answer to one request (its ``then`` aside), not yet encoded."""
        if operation is None:
            known = ", ".join(self.operations)
            return error_message(request_id, "M_UNRECOGNIZED", f"op: unknown operation "
                                 f"{message.get('op')!r:.100} (known: {known})")
        hook = operation.hook
        try:
            args = operation.arguments(message)
        except BadRequest as exc:
            return error_message(request_id, "M_BAD_JSON", f"{message['op']}: {exc}")
        ready = self._ready
        if ready is not None and not ready.is_set() and not self._for_own_user(args[0]):
            await ready.wait()
        metrics = self._metrics
        started = time.perf_counter() if metrics is not None else 0.0
        try:
            outcome = await self.dispatcher.intercept(hook, *args)
        except Exception:
            log.exception("module wire: %s failed", hook)
            return error_message(request_id, "M_UNKNOWN", f"{hook} failed in the container")
        if metrics is not None:
            metrics.outcome(self.name, outcome, time.perf_counter() - started)
        try:
            reply = reply_for(request_id, outcome)
            if "modify" in reply:
                encode(reply)  # content JSON cannot carry fails here, naming the plugin
        except TypeError as exc:
            kind = type(outcome.decision).__name__
            log.error("module wire: plugin %r answered %s with a %s that cannot be sent "
                      "(%s: %s); answering an error", outcome.decided_by, hook, kind,
                      type(exc).__name__, exc)
            return error_message(request_id, "M_UNKNOWN", f"plugin {outcome.decided_by!r} "
                                 f"answered {hook} with a {kind} that cannot be sent")
        if outcome.decision is not None:
            subject = args[0]
            if type(subject) is Event:
                record = audit_record(outcome, subject.event_id, subject.room_id,
                                      wire=self.name)
            else:
                record = audit_record(outcome, room_id=message.get("room_id"), wire=self.name)
            self._record_later(record)
        return reply

    def connected(self) -> None:
        """A module has authenticated."""
        self._connected.set()

    def _for_own_user(self, subject: Any) -> bool:
        """Whether a request's actor (an event's sender, else its first field, a user ID)
        is one of the container's own users."""
        actor = subject.sender if type(subject) is Event else subject
        return isinstance(actor, str) and self._own_user(actor)

    def _record_later(self, record: AuditRecord) -> None:
        """Queue ``record`` for the audit log, written by one writer task.

        The task starts on the loop's next turn, after the answer is written (it
        is, before that turn), so a slow store never holds an answer back; the
        records decided meanwhile go into one commit (a task per record would
        cost more than the commit).
        """
        self._unwritten.append(record)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_audit())

    async def _write_audit(self) -> None:
        while self._unwritten:
            records, self._unwritten = self._unwritten, []
            try:
                await self._store.commit(Batch(audit=records))
            except Exception:
                log.exception("module wire: could not write %d decisions to the audit log "
                              "(the first: plugin %r's %s)", len(records), records[0].plugin,
                              records[0].decision)

    def _in_flight(self) -> set[asyncio.Task[None]]:
        """The requests being answered, and the audit writer while it runs."""
        tasks = {task for connection in self.connections for task in connection.tasks}
        if self._writer is not None and not self._writer.done():
            tasks.add(self._writer)
        return tasks

    async def drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Wait until no request is in flight on any connection and their audit records
        are written, at most ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while tasks := self._in_flight():
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning("module wire: stopping with %d requests unanswered or audit "
                            "records unwritten after %g s", len(tasks), timeout_s)
                return
            await asyncio.wait(tasks, timeout=remaining)

    def close_all(self) -> None:
        """Drop every connection (the module notices at once and reconnects later)."""
        for connection in list(self.connections):
            connection.close()

    def routes(self) -> list[BaseRoute]:
        """None: the module connects to a listener of its own, not over HTTP."""
        return []

    async def settled(self, timeout_s: float) -> None:
        """Wait until a module has said hello, at most ``timeout_s`` (the module retries
        at least every second; without it, Synapse refuses a fail-closed callback at once)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Accept module connections on ``host``:``port`` while the app lives.

        On the way out it stops accepting connections, waits up to
        :data:`DRAIN_TIMEOUT_S` for the requests in flight to be answered, then
        closes the connections (before the plugins stop).
        """
        host, port = self.host, self.port
        try:
            server = await asyncio.get_running_loop().create_server(self.protocol, host, port)
        except OSError as exc:
            raise OSError(exc.errno, f"module wire: cannot listen on {host}:{port} ([module] "
                          f"host and port): {exc.strerror}; is another container running "
                          "there? Choose another port (and run `servletkit synapse-config` "
                          "again)") from None
        log.info("module wire: listening on %s:%d", host, port)
        try:
            yield
        finally:
            server.close()  # no new connections; the open ones get their answers
            await self.drain()
            self.close_all()
            await server.wait_closed()


def module_wire(container: Container) -> ModuleWire | None:
    """The container's module wire, or ``None`` unless ``[module] enabled``."""
    settings = container.config.module
    if not settings.enabled:
        return None
    wire = ModuleWire(container.dispatcher, settings.secret, container.store, container.hooks,
                      host=settings.host, port=settings.port, ready=container.ready,
                      own_user=container.is_own_user,
                      max_hello_bytes=settings.max_hello_bytes,
                      max_connections=settings.max_connections,
                      metrics=metrics_for(container))
    return wire
