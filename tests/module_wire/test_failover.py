"""Several container instances for one Synapse module (no Synapse run): turns and failover."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from servletkit.synapse.client import ContainerUnavailable
from servletkit.synapse.failover import Containers
from servletkit.wires.module.protocol import PROTOCOL_VERSION, encode
from tests.module_wire.test_client import TcpTransport, frames, result


class Instances:
    """:class:`Containers` over two addresses on a memory reactor; connections by hand."""

    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.containers = Containers(self.reactor, (("127.0.0.1", 1), ("127.0.0.1", 2)), "s")
        self.protocols: dict[int, Any] = {}
        self.transports: dict[int, TcpTransport] = {}
        self.containers.connect()

    def _factory(self, index: int) -> Any:
        port = index + 1
        return [c for c in self.reactor.tcpClients if c[1] == port][-1][2]

    def open(self, index: int) -> None:
        """Accept instance ``index``'s latest attempt and complete the hello."""
        self.transports[index] = TcpTransport()
        self.protocols[index] = self._factory(index).buildProtocol(None)
        self.protocols[index].makeConnection(self.transports[index])
        self.protocols[index].dataReceived(encode({"op": "hello", "protocol": PROTOCOL_VERSION}))
        frames(self.transports[index])  # drop the hello

    def refuse(self, index: int) -> None:
        """Refuse instance ``index``'s latest connection attempt."""
        self._factory(index).clientConnectionFailed(None, Failure(ConnectionRefusedError()))

    def sent(self, index: int) -> list[dict[str, Any]]:
        return frames(self.transports[index])

    def answer(self, index: int, message: dict[str, Any]) -> None:
        self.protocols[index].dataReceived(encode(message))


@pytest.fixture
def both() -> Instances:
    instances = Instances()
    instances.open(0)
    instances.open(1)
    return instances


def test_connected_instances_take_turns(both: Instances) -> None:
    """Requests alternate between the connected instances."""
    for _ in range(4):
        both.containers.request("join", {"user_id": "@a:x"}, 1.0)
    assert (len(both.sent(0)), len(both.sent(1))) == (2, 2)


def test_dropped_connection_fails_over(both: Instances) -> None:
    """An instance that drops the connection with the request in flight: the other answers."""
    pending = both.containers.request("join", {"user_id": "@a:x"}, 1.0)
    first = 0 if both.transports[0].value() else 1
    other = 1 - first
    both.transports[first].loseConnection()
    both.protocols[first].connectionLost(Failure(ConnectionRefusedError()))
    [frame] = both.sent(other)
    assert frame["user_id"] == "@a:x"
    both.answer(other, {"id": frame["id"]})
    assert result(pending) == {"id": frame["id"]}
    for _ in range(3):  # while the first one is away, the other takes everything
        both.containers.request("join", {"user_id": "@b:x"}, 1.0)
    assert len(both.sent(other)) == 3


def test_all_down_fails_with_every_reason() -> None:
    """No instance reachable: ContainerUnavailable naming each address."""
    instances = Instances()
    pending = instances.containers.request("join", {"user_id": "@a:x"}, 1.0)
    instances.refuse(0)
    instances.refuse(1)
    with pytest.raises(ContainerUnavailable, match=r"127\.0\.0\.1:[12].*127\.0\.0\.1:[12]"):
        result(pending)


def test_timeout_is_not_retried(both: Instances) -> None:
    """A slow instance spends the budget: TimeoutError, no second request."""
    pending = both.containers.request("join", {"user_id": "@a:x"}, 0.5)
    both.reactor.advance(0.6)
    with pytest.raises(defer.TimeoutError):
        result(pending)
    assert len(both.sent(0)) + len(both.sent(1)) == 1
