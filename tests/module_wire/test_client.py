"""The Synapse side of the module wire: the client protocol, answers, settings (no Synapse run).

The client runs on Twisted's in-memory reactor: connections are made by hand,
the clock is advanced by hand, and what the client writes is read back.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from servletkit.hooks.decisions import Allow, Modify, Veto
from servletkit.synapse.client import (
    FIRST_RETRY_DELAY_S,
    MAX_RETRY_DELAY_S,
    ContainerClient,
    ContainerUnavailable,
)
from servletkit.synapse.module import Unanswered, read_answer
from servletkit.synapse.settings import DEFAULT_POLICIES, SettingsError, parse_settings
from servletkit.wires.module.protocol import HEADER, PROTOCOL_VERSION, decode, encode


class TcpTransport(StringTransport):
    """An in-memory transport with the TCP methods the client uses."""

    flushes = 0

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.nodelay = enabled

    def doWrite(self) -> None:
        self.flushes += 1


def frames(transport: StringTransport) -> list[dict[str, Any]]:
    """The frames written to ``transport`` so far (and clear it)."""
    data, found = transport.value(), []
    transport.clear()
    while data:
        (length,) = HEADER.unpack_from(data)
        found.append(decode(data[HEADER.size:HEADER.size + length]))
        data = data[HEADER.size + length:]
    return found


class Harness:
    """A client on a memory reactor, and the connection it opens."""

    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.client = ContainerClient(self.reactor, "127.0.0.1", 8091, "the-secret")
        self.protocol: Any = None
        self.transport = TcpTransport()

    def open(self) -> None:
        """Accept the client's latest connection attempt."""
        factory = self.reactor.tcpClients[-1][2]
        self.transport = TcpTransport()
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)

    def refuse(self) -> None:
        """Refuse the client's latest connection attempt."""
        connector = self.reactor.connectors[-1]
        self.reactor.tcpClients[-1][2].clientConnectionFailed(
            connector, Failure(ConnectionRefusedError()))

    def answer(self, message: dict[str, Any]) -> None:
        self.protocol.dataReceived(encode(message))

    def connected(self) -> None:
        """Connect and complete the hello."""
        self.client.connect()
        self.open()
        assert frames(self.transport) == [
            {"op": "hello", "protocol": PROTOCOL_VERSION, "secret": "the-secret"}]
        self.answer({"op": "hello", "protocol": PROTOCOL_VERSION})
        assert self.client.connected


def result(deferred: defer.Deferred[Any]) -> Any:
    """The result of a fired Deferred (its exception raised)."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


@pytest.fixture
def harness() -> Harness:
    return Harness()


class TestClient:
    def test_request_and_answer(self, harness: Harness) -> None:
        """A request is one frame with an id; the answer with that id fires its Deferred."""
        harness.connected()
        first = harness.client.request("join", {"user_id": "@a:x", "room_id": "!r:x"}, 1.0)
        second = harness.client.request("event", {"event": {}}, 1.0)
        sent = frames(harness.transport)
        assert [(f["id"], f["op"]) for f in sent] == [(1, "join"), (2, "event")]
        harness.answer({"id": 2, "veto": {"errcode": "M_FORBIDDEN", "reason": "no"}})
        harness.answer({"id": 1})
        assert result(first) == {"id": 1}
        assert result(second)["veto"]["reason"] == "no"
        assert harness.transport.nodelay
        assert harness.transport.flushes == 2  # each request leaves at once

    def test_request_waits_for_the_connection(self, harness: Harness) -> None:
        """A request made while connecting is sent once the hello completes."""
        harness.client.connect()
        pending = harness.client.request("join", {"user_id": "@a:x", "room_id": "!r:x"}, 1.0)
        harness.open()
        harness.answer({"op": "hello", "protocol": PROTOCOL_VERSION})
        assert [f["op"] for f in frames(harness.transport)] == ["hello", "join"]
        harness.answer({"id": 1})
        assert result(pending) == {"id": 1}

    def test_timeout_and_late_answer(self, harness: Harness) -> None:
        """Past its budget a request fails with TimeoutError; its late answer is ignored."""
        harness.connected()
        pending = harness.client.request("event", {"event": {}}, 0.5)
        harness.reactor.advance(0.6)
        with pytest.raises(defer.TimeoutError):
            result(pending)
        harness.answer({"id": 1})  # no error
        later = harness.client.request("event", {"event": {}}, 0.5)
        harness.answer({"id": 2})
        assert result(later) == {"id": 2}

    def test_connection_lost_fails_pending_and_reconnects(self, harness: Harness) -> None:
        """Losing the connection fails what is in flight and reconnects at once."""
        harness.connected()
        pending = harness.client.request("event", {"event": {}}, 5.0)
        harness.protocol.connectionLost(Failure(ConnectionDone()))
        with pytest.raises(ContainerUnavailable, match="closed"):
            result(pending)
        assert not harness.client.connected
        attempts = len(harness.reactor.tcpClients)
        harness.reactor.advance(0)
        assert len(harness.reactor.tcpClients) == attempts + 1

    def test_unreachable_fails_fast_and_backs_off(self, harness: Harness) -> None:
        """While the container is unreachable requests fail at once; retries back off."""
        harness.client.connect()
        harness.refuse()
        with pytest.raises(ContainerUnavailable, match="Connection was refused"):
            result(harness.client.request("event", {"event": {}}, 5.0))
        delays = []
        for _ in range(8):
            attempts = len(harness.reactor.tcpClients)
            waited = 0.0
            while len(harness.reactor.tcpClients) == attempts:
                harness.reactor.advance(0.01)
                waited += 0.01
            delays.append(round(waited, 2))
            harness.refuse()
        assert delays[0] <= FIRST_RETRY_DELAY_S + 0.01
        assert delays == sorted(delays)
        assert max(delays) <= MAX_RETRY_DELAY_S + 0.01
        harness.reactor.advance(MAX_RETRY_DELAY_S)
        harness.open()  # the container is back: the next attempt succeeds
        harness.answer({"op": "hello", "protocol": PROTOCOL_VERSION})
        assert harness.client.connected

    def test_refused_hello(self, harness: Harness) -> None:
        """A refused hello (wrong secret) fails waiting requests with the container's reason."""
        harness.client.connect()
        pending = harness.client.request("event", {"event": {}}, 5.0)
        harness.open()
        harness.answer({"id": None, "error": {"errcode": "M_FORBIDDEN", "error": "wrong secret"}})
        with pytest.raises(ContainerUnavailable, match="wrong secret"):
            result(pending)
        assert harness.transport.disconnecting
        assert not harness.client.connected

    def test_garbage_frame_drops_the_connection(self, harness: Harness) -> None:
        """A frame that is not JSON makes the client drop the connection."""
        harness.connected()
        pending = harness.client.request("event", {"event": {}}, 5.0)
        harness.protocol.dataReceived(HEADER.pack(3) + b"{x}")
        assert harness.transport.disconnecting
        harness.protocol.connectionLost(Failure(ConnectionDone()))
        with pytest.raises(ContainerUnavailable):
            result(pending)

    def test_oversized_frame_drops_the_connection(self, harness: Harness) -> None:
        """A length prefix above the limit makes the client drop the connection."""
        harness.connected()
        harness.protocol.dataReceived(HEADER.pack(2**31))
        assert harness.transport.disconnecting


class TestReadAnswer:
    @pytest.mark.parametrize(("message", "expected"), [
        ({"id": 1}, Allow()),
        ({"id": 1, "modify": {"body": "x"}}, Modify({"body": "x"})),
        ({"id": 1, "veto": {"errcode": "M_X", "reason": "r"}}, Veto("r", "M_X")),
    ])
    def test_decisions(self, message: dict[str, Any], expected: Any) -> None:
        """Well-formed answers become decisions."""
        assert read_answer(message) == expected

    @pytest.mark.parametrize("message", [
        {"id": 1, "veto": "no"},
        {"id": 1, "veto": {"errcode": 5, "reason": "r"}},
        {"id": 1, "modify": ["body"]},
        {"id": 1, "error": {"errcode": "M_BAD_JSON", "error": "bad"}},
    ])
    def test_garbage_is_unanswered(self, message: dict[str, Any]) -> None:
        """Malformed answers and error answers leave the failure policy to decide."""
        assert type(read_answer(message)) is Unanswered


class TestSettings:
    def test_defaults(self) -> None:
        """Only the secret is required; policies default to fail closed but remote events."""
        settings = parse_settings({"secret": "s"})
        assert (settings.host, settings.port) == ("127.0.0.1", 8091)
        assert settings.policies == DEFAULT_POLICIES
        assert [name for name, p in DEFAULT_POLICIES.items() if p.fail_open] == [
            "check_event_for_spam"]

    def test_callback_override(self) -> None:
        """A callback's entry overrides only the keys it names."""
        settings = parse_settings({"secret": "s", "callbacks": {
            "check_login_for_spam": {"fail_open": True}}})
        policy = settings.policies["check_login_for_spam"]
        assert (policy.fail_open, policy.timeout_ms) == (True, 2000.0)

    def test_containers(self) -> None:
        """``containers`` lists several instances' addresses, in order."""
        settings = parse_settings({"secret": "s", "containers": ["10.0.0.1:8091", "b.lan:9"]})
        assert settings.addresses == (("10.0.0.1", 8091), ("b.lan", 9))
        assert parse_settings({"secret": "s", "port": 7}).addresses == (("127.0.0.1", 7),)

    @pytest.mark.parametrize(("config", "message"), [
        ({}, "config.secret: required"),
        ({"secret": "s", "containers": []}, "config.containers: must be a non-empty list"),
        ({"secret": "s", "containers": ["a:1"], "port": 2}, "either containers or host"),
        ({"secret": "s", "containers": ["a:1", "a"]}, r"config.containers\[1\]: must be"),
        ({"secret": "s", "containers": ["a:70000"]}, "must be a TCP port number"),
        ({"secret": "s", "containers": ["a:1", "a:1"]}, "listed twice"),
        ({"secret": "s", "prot": 1}, "config.prot: unknown key"),
        ({"secret": "s", "port": "80"}, "config.port: must be a TCP port number"),
        ({"secret": "s", "callbacks": {"check_foo": {}}}, "check_foo: unknown callback"),
        ({"secret": "s", "callbacks": {"user_may_invite": {"timeout_ms": 0}}},
         "user_may_invite.timeout_ms: must be a positive number"),
        ({"secret": "s", "callbacks": {"user_may_invite": {"fail_open": "yes"}}},
         "fail_open: must be true or false"),
    ])
    def test_errors_name_the_key(self, config: dict[str, Any], message: str) -> None:
        """A wrong config fails naming the key."""
        with pytest.raises(SettingsError, match=message):
            parse_settings(config)
