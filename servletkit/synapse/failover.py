"""Several container instances for one Synapse: spread requests, fail over when one is down.

:class:`Containers` keeps one :class:`~servletkit.synapse.client.ContainerClient`
per address of the module config's ``containers`` (each with its own
connection and reconnection) and answers a request from one of them:

- the connected instances take turns (round robin), then the others (whose
  request waits for a connection attempt under way, or fails at once);
- when the chosen instance cannot answer (:class:`ContainerUnavailable`: no
  connection, refused, or the connection dropped with the request in flight)
  the request goes to the next one, with what is left of the callback's budget;
- running out of budget (:class:`defer.TimeoutError`) is not retried: the budget
  is spent, and the callback's failure policy applies.

A request retried after a dropped connection may have been seen by the first
instance too; the module-wire hooks are decisions, asked again, not actions
done twice (plugin side effects that must happen once go through the store).
With one address this is the single client's behaviour unchanged.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from servletkit.synapse.client import ContainerClient, ContainerUnavailable


class Containers:
    """The module's clients, one per container instance, behind one ``request``."""

    def __init__(self, reactor: Any, addresses: tuple[tuple[str, int], ...],
                 secret: str) -> None:
        self._reactor: Any = reactor
        self.clients = [ContainerClient(reactor, host, port, secret) for host, port in addresses]
        self._turn = 0

    def connect(self) -> None:
        """Start connecting to every instance."""
        for client in self.clients:
            client.connect()

    def stop(self) -> None:
        """Close every connection and stop reconnecting."""
        for client in self.clients:
            client.stop()

    def request(
        self, op: str, fields: dict[str, Any], timeout_s: float
    ) -> defer.Deferred[dict[str, Any]]:
        """Send a request to one instance, the next on :class:`ContainerUnavailable`;
        fires with the answer frame, or fails like
        :meth:`ContainerClient.request` once no instance is left or the budget is spent."""
        if len(self.clients) == 1:  # nothing to fail over to: skip the bookkeeping
            return self.clients[0].request(op, fields, timeout_s)
        deadline = self._reactor.seconds() + timeout_s
        return self._attempt(self._order(), op, fields, deadline, [])

    def _order(self) -> list[ContainerClient]:
        """The connected instances from the current turn on, then the rest."""
        count = len(self.clients)
        self._turn = (self._turn + 1) % count
        rotated = self.clients[self._turn:] + self.clients[:self._turn]
        return ([c for c in rotated if c.connected]
                + [c for c in rotated if not c.connected])

    def _attempt(
        self, order: list[ContainerClient], op: str, fields: dict[str, Any], deadline: float,
        errors: list[str],
    ) -> defer.Deferred[dict[str, Any]]:
        client, rest = order[0], order[1:]
        remaining = deadline - self._reactor.seconds()
        answer = client.request(op, dict(fields), remaining)

        def next_instance(failure: Failure) -> Any:
            unavailable = isinstance(failure.value, ContainerUnavailable)
            if unavailable and rest and deadline > self._reactor.seconds():
                errors.append(failure.getErrorMessage())
                return self._attempt(rest, op, fields, deadline, errors)
            if unavailable and errors:  # every instance tried: say why for each
                raise ContainerUnavailable("; ".join([*errors, failure.getErrorMessage()]))
            return failure

        return answer.addErrback(next_instance)
