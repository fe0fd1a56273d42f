"""The container side of the module wire: its listener, spoken to over a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from servletkit.container.plugins import PluginSource
from servletkit.container.runtime import Container
from servletkit.hooks.decisions import Modify, Veto
from servletkit.hooks.dispatcher import Outcome
from servletkit.store import Batch, SqliteStore
from servletkit.testing.synapse import free_port
from servletkit.wires.module.listener import ModuleWire, module_wire
from servletkit.wires.module.protocol import HEADER, MAX_FRAME, PROTOCOL_VERSION, decode, encode
from tests.module_wire import wire_plugin
from tests.module_wire.conftest import SECRET, container_config

EVENT = {"event_id": "$e1", "room_id": "!r:localhost", "type": "m.room.message",
         "sender": "@a:localhost", "content": {"msgtype": "m.text", "body": "hi"},
         "origin_server_ts": 1, "unsigned": {}}


class Peer:
    """A raw client of the listener: writes frames, reads frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, message: dict[str, Any]) -> None:
        self.writer.write(encode(message))
        await self.writer.drain()

    async def receive(self) -> dict[str, Any]:
        header = await asyncio.wait_for(self.reader.readexactly(HEADER.size), 5)
        (length,) = HEADER.unpack(header)
        return decode(await asyncio.wait_for(self.reader.readexactly(length), 5))

    async def closed(self) -> bool:
        """Whether the listener closed the connection (EOF within 5 s)."""
        return await asyncio.wait_for(self.reader.read(), 5) == b""

    async def hello(self, secret: str = SECRET) -> dict[str, Any]:
        await self.send({"op": "hello", "protocol": PROTOCOL_VERSION, "secret": secret})
        return await self.receive()


@pytest.fixture(scope="module")
async def listening(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Container]:
    """A container running the test plugin, its module-wire listener open."""
    config = container_config(free_port(), store=tmp_path_factory.mktemp("listener") / "s.db")
    container = Container(config, [PluginSource("wire_test", obj=wire_plugin)])
    container.load()
    await container.start()
    async with module_wire(container).lifespan():
        yield container
    await container.stop()


@pytest.fixture(scope="module")
def listener(listening: Container) -> int:
    """The listener's port."""
    return listening.config.module.port


@pytest.fixture
async def peer(listener: int) -> AsyncIterator[Peer]:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener)
    yield Peer(reader, writer)
    writer.close()


@pytest.fixture
async def authed(peer: Peer) -> Peer:
    assert await peer.hello() == {"op": "hello", "protocol": PROTOCOL_VERSION}
    return peer


class TestHello:
    async def test_wrong_secret_refused(self, peer: Peer) -> None:
        """A wrong secret gets M_FORBIDDEN and the connection is closed."""
        answer = await peer.hello("not-the-secret")
        assert answer["error"]["errcode"] == "M_FORBIDDEN"
        assert "wrong secret" in answer["error"]["error"]
        assert await peer.closed()

    async def test_request_before_hello_refused(self, peer: Peer) -> None:
        """A request without a hello first is refused."""
        await peer.send({"id": 1, "op": "event", "event": EVENT})
        assert (await peer.receive())["error"]["errcode"] == "M_FORBIDDEN"
        assert await peer.closed()

    async def test_other_protocol_version_refused(self, peer: Peer) -> None:
        """A module speaking another protocol version is told which one the container speaks."""
        await peer.send({"op": "hello", "protocol": 99, "secret": SECRET})
        answer = await peer.receive()
        assert answer["error"]["errcode"] == "M_UNRECOGNIZED"
        assert f"speaks {PROTOCOL_VERSION}" in answer["error"]["error"]
        assert await peer.closed()

    @pytest.mark.parametrize("protocol", [True, 1.0, "1", [1]])
    async def test_protocol_must_be_the_integer(self, peer: Peer, protocol: Any) -> None:
        """A protocol that only compares equal to the version (``true``, ``1.0``) is refused."""
        await peer.send({"op": "hello", "protocol": protocol, "secret": SECRET})
        assert (await peer.receive())["error"]["errcode"] == "M_UNRECOGNIZED"
        assert await peer.closed()


class TestGarbage:
    async def test_not_json(self, authed: Peer) -> None:
        """A frame that is not JSON ends the connection with M_NOT_JSON."""
        authed.writer.write(HEADER.pack(5) + b"{oops")
        assert (await authed.receive())["error"]["errcode"] == "M_NOT_JSON"
        assert await authed.closed()

    async def test_not_an_object(self, authed: Peer) -> None:
        """A JSON frame that is not an object ends the connection too."""
        authed.writer.write(HEADER.pack(2) + b"[]")
        assert (await authed.receive())["error"]["errcode"] == "M_NOT_JSON"
        assert await authed.closed()

    async def test_frame_too_large(self, peer: Peer) -> None:
        """A length prefix above MAX_FRAME is refused before reading the body."""
        peer.writer.write(HEADER.pack(MAX_FRAME + 1))
        assert (await peer.receive())["error"]["errcode"] == "M_TOO_LARGE"
        assert await peer.closed()

    @pytest.mark.parametrize(("request_", "errcode", "detail"), [
        ({"id": 1, "op": "teleport"}, "M_UNRECOGNIZED", "unknown operation 'teleport'"),
        ({"id": 2, "op": "event", "event": {**EVENT, "sender": 5}}, "M_BAD_JSON",
         "event.sender: must be str, got int"),
        ({"id": 3, "op": "join", "user_id": "@a:localhost"}, "M_BAD_JSON",
         "room_id: must be a string, got NoneType"),
        ({"id": 4, "op": "create_room", "user_id": "@a:localhost", "request": []},
         "M_BAD_JSON", "request: must be an object"),
        ({"op": "event", "event": EVENT}, "M_BAD_JSON", "id: must be an integer"),
    ])
    async def test_bad_request_answered_connection_kept(
        self, authed: Peer, request_: dict[str, Any], errcode: str, detail: str
    ) -> None:
        """A malformed request gets an error answer; the connection goes on working."""
        await authed.send(request_)
        answer = await authed.receive()
        assert answer["id"] == request_.get("id")
        assert answer["error"]["errcode"] == errcode
        assert detail in answer["error"]["error"]
        await authed.send({"id": 10, "op": "event", "event": EVENT})
        assert await authed.receive() == {"id": 10}


class TestAudit:
    async def test_decisions_are_recorded_no_opinion_is_not(
        self, authed: Peer, listening: Container
    ) -> None:
        """A Veto and a Modify go to the audit log with the event or room; no opinion does not."""
        tag = uuid.uuid4().hex
        requests = [
            {"op": "event", "event": {**EVENT, "event_id": f"$veto{tag}",
                                      "content": {"body": "forbidden"}}},
            {"op": "event", "event": {**EVENT, "event_id": f"$modify{tag}",
                                      "content": {"body": "/shout x"}}},
            {"op": "event", "event": {**EVENT, "event_id": f"$none{tag}"}},
            {"op": "join", "user_id": "@blocked:localhost", "room_id": f"!{tag}:localhost"},
            {"op": "join", "user_id": "@a:localhost", "room_id": f"!{tag}:localhost"},
        ]
        for request_id, request in enumerate(requests):
            await authed.send({"id": request_id, **request})
            assert (await authed.receive())["id"] == request_id
        await asyncio.sleep(0)
        records = await listening.store.audit_log(1000)
        mine = [(r.plugin, r.hook, r.decision, r.event_id, r.room_id, r.detail)
                for r in records if tag in f"{r.event_id}{r.room_id}"]
        assert mine == [
            ("wire_test", "on_send_event", "veto", f"$veto{tag}", EVENT["room_id"],
             "the word 'forbidden' is not welcome here"),
            ("wire_test", "on_send_event", "modify", f"$modify{tag}", EVENT["room_id"], ""),
            ("wire_test", "on_join_room", "veto", None, f"!{tag}:localhost",
             f"@blocked:localhost may not join !{tag}:localhost"),
        ]


class TestFraming:
    async def test_frames_in_any_pieces(self, authed: Peer) -> None:
        """Frames split mid-header and mid-body, or several in one read, are all answered."""
        one = encode({"id": 1, "op": "event", "event": EVENT})
        two = encode({"id": 2, "op": "event", "event": EVENT})
        data = one + two
        for piece in (data[:2], data[2:9], data[9:len(one) + 3], data[len(one) + 3:]):
            authed.writer.write(piece)
            await authed.writer.drain()
            await asyncio.sleep(0.01)
        assert [await authed.receive() for _ in range(2)] == [{"id": 1}, {"id": 2}]
        await authed.send({"id": 3, "op": "event", "event": EVENT})
        assert await authed.receive() == {"id": 3}


class TestDecisions:
    async def test_allow_veto_modify(self, authed: Peer) -> None:
        """Each decision has its answer: nothing to say, a veto, new content."""
        body = {"msgtype": "m.text", "body": "/shout hey"}
        await authed.send({"id": 1, "op": "event", "event": EVENT})
        assert await authed.receive() == {"id": 1}
        await authed.send({"id": 2, "op": "event",
                           "event": {**EVENT, "content": {"body": "forbidden"}}})
        assert await authed.receive() == {"id": 2, "veto": {
            "errcode": wire_plugin.VETO_ERRCODE,
            "reason": "the word 'forbidden' is not welcome here"}}
        await authed.send({"id": 3, "op": "event", "event": {**EVENT, "content": body}})
        assert await authed.receive() == {"id": 3, "modify": {"msgtype": "m.text",
                                                              "body": "HEY"}}

    async def test_modify_that_is_not_json(self, authed: Peer) -> None:
        """Content that cannot be sent is answered with an error naming the plugin."""
        await authed.send({"id": 4, "op": "event",
                           "event": {**EVENT, "content": {"body": "unserialisable"}}})
        answer = await authed.receive()
        assert answer == {"id": 4, "error": {
            "errcode": "M_UNKNOWN",
            "error": "plugin 'wire_test' answered on_send_event with a Modify that cannot be sent",
        }}
        await authed.send({"id": 5, "op": "event", "event": EVENT})
        assert await authed.receive() == {"id": 5}

    async def test_every_op_reaches_its_hook(self, authed: Peer) -> None:
        """join, invite, create_room and connect run their hooks (each vetoes here)."""
        requests = [
            {"op": "join", "user_id": "@blocked:localhost", "room_id": "!r:localhost"},
            {"op": "invite", "inviter_id": "@a:localhost", "invitee_id": "@blocked:localhost",
             "room_id": "!r:localhost"},
            {"op": "create_room", "user_id": "@a:localhost",
             "request": {"name": "forbidden room"}},
            {"op": "connect", "user_id": "@nologin:localhost", "device_id": None},
        ]
        for request_id, request in enumerate(requests):
            await authed.send({"id": request_id, **request})
            answer = await authed.receive()
            assert answer["id"] == request_id
            assert "veto" in answer, request

    async def test_answers_do_not_wait_for_slow_ones(self, authed: Peer) -> None:
        """Requests run concurrently: a fast answer overtakes a slow one."""
        await authed.send({"id": 1, "op": "event",
                           "event": {**EVENT, "content": {"body": "slow"}}})
        await authed.send({"id": 2, "op": "event", "event": EVENT})
        assert await authed.receive() == {"id": 2}
        assert await authed.receive() == {"id": 1}


def member_event(name: str) -> dict[str, Any]:
    """A join event of ``@a:localhost`` with the display name ``name``."""
    return {**EVENT, "type": "m.room.member", "state_key": "@a:localhost",
            "content": {"membership": "join", "displayname": name}}


class TestThen:
    async def test_action_and_event_in_one_answer(self, authed: Peer) -> None:
        """A join with its membership event in ``then``: both answers in one frame."""
        join = {"op": "join", "user_id": "@a:localhost", "room_id": "!r:localhost"}
        await authed.send({"id": 1, **join, "then": {"op": "event", "event": member_event("a")}})
        assert await authed.receive() == {"id": 1, "then": {"id": 1}}
        await authed.send({"id": 2, **join,
                           "then": {"op": "event", "event": member_event("forbidden a")}})
        assert await authed.receive() == {"id": 2, "then": {"id": 2, "veto": {
            "errcode": wire_plugin.VETO_ERRCODE,
            "reason": "the name 'forbidden a' is not welcome here"}}}
        await authed.send({"id": 3, **join,
                           "then": {"op": "event", "event": member_event("/shout a")}})
        assert await authed.receive() == {"id": 3, "then": {"id": 3, "modify": {
            "membership": "join", "displayname": "A"}}}

    async def test_refused_action_skips_the_event(self, authed: Peer) -> None:
        """A vetoed join is answered alone: its membership event's hook does not run."""
        seen = len(wire_plugin.SEEN)
        await authed.send({"id": 1, "op": "join", "user_id": "@blocked:localhost",
                           "room_id": "!r:localhost",
                           "then": {"op": "event", "event": member_event("b")}})
        answer = await authed.receive()
        assert set(answer) == {"id", "veto"}
        assert len(wire_plugin.SEEN) == seen

    @pytest.mark.parametrize("then", [
        "event", {"op": "nope"}, {"op": "event", "event": {"type": 1}},
        {"op": "event", "event": EVENT, "then": {"op": "event", "event": EVENT}},
    ])
    async def test_bad_then_answered_with_an_error(self, authed: Peer, then: Any) -> None:
        """A malformed ``then`` is an error in ``then``; the action is still answered."""
        await authed.send({"id": 1, "op": "join", "user_id": "@a:localhost",
                           "room_id": "!r:localhost", "then": then})
        answer = await authed.receive()
        assert answer["id"] == 1
        assert set(answer) == {"id", "then"}
        assert answer["then"]["error"]["errcode"] in {"M_BAD_JSON", "M_UNRECOGNIZED"}


async def test_disabled_module_has_no_wire() -> None:
    """Without [module] enabled the container has no module wire, so no listener."""
    config = container_config(free_port())
    assert module_wire(Container(type(config)(path=config.path), [])) is None
    assert module_wire(Container(config, [])) is not None


async def test_port_taken_is_explained() -> None:
    """A taken port fails with a message naming the [module] keys, not a bare errno."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        container = Container(container_config(port), [])
        with pytest.raises(OSError, match=r"cannot listen on 127\.0\.0\.1:\d+ \(\[module\] host"):
            async with module_wire(container).lifespan():
                pass


class FixedDispatcher:
    """A dispatcher that answers every hook with one outcome (sync or async plugins)."""

    def __init__(self, outcome: Outcome, *, sync: bool) -> None:
        self.outcome = outcome
        self.sync = sync

    def all_sync(self, hook: str) -> bool:
        return self.sync

    async def intercept(self, hook: str, *args: Any) -> Outcome:
        if not self.sync:
            await asyncio.sleep(0)
        return self.outcome


def unchecked(build: Any) -> Any:
    """A decision the validators would refuse: the wire must survive one anyway."""
    with attrs.validators.disabled():
        return build()


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
@pytest.mark.parametrize("decision", [
    unchecked(lambda: Veto({"a", "set"})),
    unchecked(lambda: Veto(3)),
    unchecked(lambda: Veto("reason", None)),
    unchecked(lambda: Modify([("body", "pairs")])),
    Modify({"body": object()}),
], ids=["veto-set", "veto-int", "veto-errcode-none", "modify-pairs", "modify-object"])
async def test_a_decision_that_cannot_be_sent_keeps_the_connection(
    decision: Any, sync: bool, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A malformed decision becomes an error frame for its request, naming the plugin;
    the connection goes on."""
    dispatcher = FixedDispatcher(Outcome("on_send_event", decision, "badplugin"), sync=sync)
    store = SqliteStore(tmp_path / "servletkit.db")
    wire = ModuleWire(dispatcher, SECRET, store)  # type: ignore[arg-type]
    server = await asyncio.get_running_loop().create_server(wire.protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        peer = Peer(reader, writer)
        await peer.hello()
        for request_id in (1, 2):
            await peer.send({"id": request_id, "op": "event", "event": EVENT})
            answer = await peer.receive()
            assert answer["id"] == request_id
            assert answer["error"]["errcode"] == "M_UNKNOWN"
            assert "'badplugin'" in answer["error"]["error"]
        assert "plugin 'badplugin' answered on_send_event" in caplog.text
        assert await store.audit_log() == []  # nothing was decided
    finally:
        await store.close()
        writer.close()
        server.close()
        wire.close_all()
        await server.wait_closed()


class AuditStore:
    """Keeps the event ids of each audit commit, or fails every commit."""

    def __init__(self, *, fails: bool) -> None:
        self.fails = fails
        self.commits: list[list[str | None]] = []

    async def commit(self, batch: Batch, transaction: Any = None) -> None:
        if self.fails:
            raise OSError("disk full")
        self.commits.append([record.event_id for record in batch.audit])


@pytest.mark.parametrize("fails", [False, True], ids=["written", "store-fails"])
async def test_decisions_are_audited_without_holding_answers(
    fails: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Every decision reaches the audit log once its answer is sent; a store that fails is
    logged, and the answers are the same."""
    store = AuditStore(fails=fails)
    dispatcher = FixedDispatcher(Outcome("on_send_event", Veto("no"), "judge"), sync=True)
    wire = ModuleWire(dispatcher, SECRET, store)  # type: ignore[arg-type]
    server = await asyncio.get_running_loop().create_server(wire.protocol, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        peer = Peer(reader, writer)
        await peer.hello()
        ids = [f"$e{n}" for n in range(3)]
        for request_id, event_id in enumerate(ids):
            await peer.send({"id": request_id, "op": "event",
                             "event": {**EVENT, "event_id": event_id}})
        answers = [await peer.receive() for _ in ids]
        assert [answer["veto"]["reason"] for answer in answers] == ["no"] * 3
        await wire.drain()  # waits for the audit writer too
        assert [event_id for commit in store.commits for event_id in commit] == (
            [] if fails else ids)
        assert ("could not write" in caplog.text) is fails
    finally:
        writer.close()
        server.close()
        wire.close_all()
        await server.wait_closed()


async def test_shutdown_answers_requests_in_flight(tmp_path: Path) -> None:
    """Leaving the listener refuses new connections, answers what is in flight, then closes."""
    port = free_port()
    config = container_config(port, store=tmp_path / "servletkit.db")
    container = Container(config, [PluginSource("wire_test", obj=wire_plugin)])
    container.load()
    await container.start()
    stopping = asyncio.Event()

    async def serve() -> None:
        async with module_wire(container).lifespan():
            await stopping.wait()

    serving = asyncio.create_task(serve())
    try:
        for _ in range(100):
            with contextlib.suppress(ConnectionRefusedError):
                peer = Peer(*await asyncio.open_connection("127.0.0.1", port))
                break
            await asyncio.sleep(0.01)
        await peer.hello()
        body = f"slow {uuid.uuid4().hex}"
        await peer.send({"id": 1, "op": "event", "event": {**EVENT, "content": {"body": body}}})
        for _ in range(200):  # until the plugin is working on it
            if any(event.content.get("body") == body for event in wire_plugin.SEEN):
                break
            await asyncio.sleep(0.005)
        stopping.set()
        await asyncio.sleep(0.05)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        assert await peer.receive() == {"id": 1}
        assert await peer.closed()
        await asyncio.wait_for(serving, 5)
        peer.writer.close()
    finally:
        stopping.set()
        await container.stop()
