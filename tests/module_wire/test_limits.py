"""The module wire against a hostile or careless peer: what it may cost before and after the
hello, over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import attrs
import pytest

from servletkit.container.config import parse_config
from servletkit.container.config_tables import ConfigError
from servletkit.container.plugins import PluginSource
from servletkit.container.runtime import Container
from servletkit.testing.synapse import free_port
from servletkit.wires.module.connection import WRITE_HIGH_WATER
from servletkit.wires.module.listener import ModuleWire, module_wire
from servletkit.wires.module.protocol import HEADER, PROTOCOL_VERSION, encode
from tests.module_wire import wire_plugin
from tests.module_wire.conftest import SECRET, container_config
from tests.module_wire.test_listener import Peer

MAX_CONNECTIONS = 3
LOTS = 16 * 1024 * 1024
"""More requests than the kernel's socket buffers hold, in bytes."""


@pytest.fixture(scope="module")
async def limited(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ModuleWire]:
    """A listening module wire allowing :data:`MAX_CONNECTIONS` connections."""
    config = container_config(free_port(), store=tmp_path_factory.mktemp("limits") / "s.db")
    config = attrs.evolve(config, module=attrs.evolve(config.module,
                                                      max_connections=MAX_CONNECTIONS))
    container = Container(config, [PluginSource("wire_test", obj=wire_plugin)])
    container.load()
    await container.start()
    wire = module_wire(container)
    assert wire is not None
    async with wire.lifespan():
        yield wire
    await container.stop()


@contextlib.asynccontextmanager
async def connect(wire: ModuleWire) -> AsyncIterator[Peer]:
    reader, writer = await asyncio.open_connection("127.0.0.1", wire.port)
    try:
        yield Peer(reader, writer)
    finally:
        writer.close()


class TestBeforeHello:
    async def test_a_frame_longer_than_a_hello_is_refused(self, limited: ModuleWire) -> None:
        """Before the hello, a frame announced longer than max_hello_bytes is refused as soon
        as its length arrives: nothing of it is buffered."""
        async with connect(limited) as peer:
            peer.writer.write(HEADER.pack(4097) + b"{")
            error = (await peer.receive())["error"]
            assert error["errcode"] == "M_TOO_LARGE"
            assert "[module] max_hello_bytes" in error["error"]
            assert await peer.closed()

    async def test_a_large_frame_after_the_hello_is_fine(self, limited: ModuleWire) -> None:
        """Once authenticated, frames up to the protocol's limit are read as before."""
        async with connect(limited) as peer:
            await peer.hello()
            await peer.send({"id": 1, "op": "nothing", "padding": "x" * 100_000})
            assert (await peer.receive())["error"]["errcode"] == "M_UNRECOGNIZED"

    async def test_connections_are_limited(self, limited: ModuleWire) -> None:
        """Past max_connections, a new connection gets M_LIMIT_EXCEEDED and is closed; once
        one closes, a new one is accepted again."""
        async with contextlib.AsyncExitStack() as stack:
            peers = [await stack.enter_async_context(connect(limited))
                     for _ in range(MAX_CONNECTIONS)]
            await asyncio.sleep(0.05)
            assert len(limited.connections) == MAX_CONNECTIONS
            async with connect(limited) as extra:
                error = (await extra.receive())["error"]
                assert error["errcode"] == "M_LIMIT_EXCEEDED"
                assert "[module] max_connections" in error["error"]
                assert await extra.closed()
            peers[0].writer.close()
            for _ in range(100):
                if len(limited.connections) < MAX_CONNECTIONS:
                    break
                await asyncio.sleep(0.01)
            async with connect(limited) as again:
                assert "error" not in await again.hello()


class TestConfig:
    def test_defaults(self) -> None:
        """A few KiB for the hello, 64 connections."""
        module = parse_config({}).module
        assert (module.max_hello_bytes, module.max_connections) == (4096, 64)

    @pytest.mark.parametrize("key", ["max_hello_bytes", "max_connections"])
    def test_must_be_positive(self, key: str) -> None:
        """Zero is refused, naming the key."""
        with pytest.raises(ConfigError, match=rf"module\.{key}: must be positive"):
            parse_config({"module": {key: 0}})


class TestBackpressure:
    async def test_a_peer_that_never_reads_its_answers(self, limited: ModuleWire) -> None:
        """A peer that sends requests and never reads the answers stops being read once its
        unsent answers pass the high-water mark: the container's buffer stays bounded and
        the peer's own sends stall."""
        loop = asyncio.get_running_loop()
        before = set(limited.connections)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", limited.port))
            await loop.sock_sendall(sock, encode({"op": "hello", "protocol": PROTOCOL_VERSION,
                                                  "secret": SECRET}))
            await asyncio.wait_for(loop.sock_recv(sock, 1024), 5)  # the hello's answer
            (connection,) = set(limited.connections) - before
            request = encode({"id": 1, "op": "nothing"})  # ~5x that in answers
            chunk = pending = request * 1000
            sent, stalled_since, deadline = 0, None, loop.time() + 5
            while sent < LOTS and loop.time() < deadline:
                try:
                    written = sock.send(pending)
                    sent += written
                    pending = pending[written:] or chunk  # never a frame cut short
                    stalled_since = None
                    await asyncio.sleep(0)
                except BlockingIOError:
                    stalled_since = stalled_since or loop.time()
                    if loop.time() - stalled_since > 0.5:
                        break
                    await asyncio.sleep(0.01)
            buffered = connection.unsent_bytes()
            print(f"sent {sent} bytes of requests, {buffered} bytes of answers buffered")
            assert buffered <= 2 * WRITE_HIGH_WATER, (sent, buffered)
            assert sent < LOTS  # its sends stalled
            # it reads again: every answer arrives, the connection goes on
            answers = 0
            received = bytearray()
            while answers < sent // len(request):
                data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5)
                assert data
                received += data
                while len(received) >= HEADER.size:
                    (length,) = HEADER.unpack_from(received)
                    if len(received) < HEADER.size + length:
                        break
                    del received[:HEADER.size + length]
                    answers += 1
        finally:
            sock.close()
