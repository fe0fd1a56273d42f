"""One connection from a Synapse module: framing, the hello, the limits, concurrent requests.

The wire (:class:`~servletkit.wires.module.listener.ModuleWire`) answers the
requests; a :class:`ModuleConnection` reads its peer's frames, authenticates
it and writes the answers back.
"""

from __future__ import annotations

import asyncio
import logging
import typing
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any, Final

import orjson

from servletkit.hooks.dispatcher import run_eagerly
from servletkit.wires.module.protocol import (
    HEADER,
    MAX_FRAME,
    PROTOCOL_VERSION,
    ProtocolError,
    decode,
    frame,
    jsonable,
)

if TYPE_CHECKING:
    from servletkit.wires.module.listener import ModuleWire

log = logging.getLogger("servletkit.module_wire")

HELLO_TIMEOUT_S: Final = 10.0
"""A connection that has not authenticated within this time is closed."""

WRITE_HIGH_WATER: Final = 64 * 1024
"""Unsent answers, in bytes, above which a connection's peer is no longer read (until
they are down to a quarter of it): a peer that never reads its answers costs no more."""


def _is_version(protocol: Any) -> bool:
    """Whether a hello's ``protocol`` is this version, as the integer (``true`` and ``1.0``
    compare equal to 1 in Python)."""
    return type(protocol) is int and protocol == PROTOCOL_VERSION


def encode(message: Mapping[str, Any]) -> bytes:
    """One frame of ``message``, encoded with orjson (a quarter of the stdlib's time)."""
    return frame(orjson.dumps(message, default=jsonable))


def error_message(request_id: Any, errcode: str, error: str) -> dict[str, Any]:
    return {"id": request_id, "error": {"errcode": errcode, "error": error}}


class ModuleConnection(asyncio.Protocol):
    """One connection from a Synapse module: framing, the hello, concurrent requests."""

    def __init__(self, wire: ModuleWire) -> None:
        self._wire = wire
        self._pieces: list[bytes] = []  # an incomplete frame (or frames read while paused)
        self._held = 0  # their bytes
        self._needed = 0  # the bytes they must reach before it is worth parsing again
        self._transport: asyncio.Transport | None = None
        self._authenticated = False
        self._paused = False  # its peer is not read: too many of its answers are unsent
        self._hello_timer: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[None]] = set()  # requests in flight, answered when done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence the cast
        self._transport = typing.cast(asyncio.Transport, transport)
        if not self._wire.admit():
            self._refuse("M_LIMIT_EXCEEDED", f"too many connections (at most "
                         f"{self._wire.max_connections}: [module] max_connections)")
            return
        self._transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._wire.connections.add(self)
        self._hello_timer = asyncio.get_running_loop().call_later(
            HELLO_TIMEOUT_S, self._refuse, "M_FORBIDDEN", "no hello within "
            f"{HELLO_TIMEOUT_S:g} s"
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._wire.connections.discard(self)
        self._transport = None
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        for task in self.tasks:
            task.cancel()

    def pause_writing(self) -> None:
        """Its answers pile up unsent: stop reading its requests, even those already read."""
        self._paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        """Its answers are down to the low-water mark: answer what it has sent, read on."""
        self._paused = False
        if self._transport is not None:
            self._transport.resume_reading()
            self.data_received(b"")  # the frames read before the pause

    def unsent_bytes(self) -> int:
        """Answers written but not yet taken by the peer, in bytes."""
        return 0 if self._transport is None else self._transport.get_write_buffer_size()

    def data_received(self, data: bytes) -> None:
        """Handle the whole frames read so far; keep an incomplete one's pieces.

        A frame's pieces are kept as they came and joined once it is complete (no
        quadratic copying of a large frame), and the bytes parsed are immutable: the
        frame bodies are parsed as memoryview slices, and resizing a bytearray that a
        slice still exports raises ``BufferError`` (it did, under load).
        """
        if self._pieces:
            self._pieces.append(data)
            self._held += len(data)
            if self._held < self._needed:
                return
            data = b"".join(self._pieces)
            self._pieces = []
        with memoryview(data) as view:
            offset = self._frames(view)
        if offset is None or offset == len(data):  # refused (closing), or all handled
            self._held = 0
            return
        rest = data[offset:] if offset else data
        self._pieces, self._held = [rest], len(rest)
        self._needed = HEADER.size if len(rest) < HEADER.size \
            else HEADER.size + HEADER.unpack_from(rest)[0]

    def _frames(self, view: memoryview) -> int | None:
        """Handle the whole frames in ``view``; where the first incomplete one starts."""
        offset = 0
        size = len(view)
        while size - offset >= HEADER.size and self._transport is not None and not self._paused:
            (length,) = HEADER.unpack_from(view, offset)
            if not self._authenticated and length > self._wire.max_hello_bytes:
                self._refuse("M_TOO_LARGE", f"frame of {length} bytes before the hello (at "
                             f"most {self._wire.max_hello_bytes}: [module] max_hello_bytes)")
                return None
            if length > MAX_FRAME:
                self._refuse("M_TOO_LARGE", f"frame of {length} bytes (at most {MAX_FRAME})")
                return None
            end = offset + HEADER.size + length
            if size < end:
                break
            try:
                message = decode(view[offset + HEADER.size:end], orjson.loads)
            except ProtocolError as exc:
                self._refuse("M_NOT_JSON", str(exc))
                return None
            offset = end
            self._handle(message)
        return offset

    def _handle(self, message: dict[str, Any]) -> None:
        if not self._authenticated:
            self._hello(message)
            return
        wire = self._wire
        operation = wire.operation(message)
        then = wire.then_operation(message) if "then" in message else None
        if operation is None or (wire.dispatcher.all_sync(operation.hook)
                                 and (then is None or wire.dispatcher.all_sync(then.hook))):
            done, answer = run_eagerly(self._wire.answer(message, operation))
            if done:
                self._write(answer)
                return
        else:
            answer = self._wire.answer(message, operation)
        task = asyncio.ensure_future(self._respond(answer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _hello(self, message: Mapping[str, Any]) -> None:
        if message.get("op") != "hello":
            self._refuse("M_FORBIDDEN", "the first frame must be {\"op\": \"hello\", ...}")
        elif not _is_version(message.get("protocol")):
            self._refuse("M_UNRECOGNIZED", f"protocol {message.get('protocol')!r} is not "
                         f"supported (this container speaks {PROTOCOL_VERSION}); "
                         "install the same servletkit version on both sides")
        elif not self._wire.authenticate(message.get("secret")):
            log.warning("module wire: refused a connection with a wrong secret")
            self._refuse("M_FORBIDDEN", "wrong secret: the module's `secret` must equal "
                         "[module] secret in servletkit.toml")
        else:
            self._authenticated = True
            self._wire.connected()
            if self._hello_timer is not None:
                self._hello_timer.cancel()
            self._write(encode({"op": "hello", "protocol": PROTOCOL_VERSION}))

    async def _respond(self, rest: Awaitable[bytes]) -> None:
        self._write(await rest)

    def _write(self, frame: bytes) -> None:
        if self._transport is not None:
            self._transport.write(frame)

    def _refuse(self, errcode: str, error: str) -> None:
        """Send an error frame and close: the peer broke the protocol."""
        self._write(encode(error_message(None, errcode, error)))
        self.close()

    def close(self) -> None:
        """Close the connection after what is already written."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None
