"""Property-based tests (hypothesis) of the module wire's framing, over real sockets to the
listener: whatever bytes arrive, in whatever pieces, every answer is a whole frame, a
request that is a JSON object gets exactly one answer with its id, a frame that breaks
the protocol is answered with an error frame and the connection closed, nothing hangs,
and the listener keeps serving the next connection.

Budget: ``SERVLETKIT_FUZZ_EXAMPLES`` per test (100 by default, as CI runs it); a longer
run is ``SERVLETKIT_FUZZ_EXAMPLES=5000 .venv/bin/pytest -s
tests/module_wire/test_properties.py``. The case counts are printed at the end (``-s``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from servletkit.container.plugins import PluginSource
from servletkit.container.runtime import Container
from servletkit.testing.synapse import free_port
from servletkit.wires.module.listener import module_wire
from servletkit.wires.module.protocol import HEADER, MAX_FRAME, PROTOCOL_VERSION, encode, frame
from tests.fuzz import BUDGET, json_values
from tests.module_wire import wire_plugin
from tests.module_wire.conftest import SECRET, container_config

WITHIN_S = 5.0
"""Each answer, and the close after a refusal, must come within this."""
CASES: collections.Counter[str] = collections.Counter()
HELLO = encode({"op": "hello", "protocol": PROTOCOL_VERSION, "secret": SECRET})
HELLO_ANSWER = {"op": "hello", "protocol": PROTOCOL_VERSION}
ANSWER_KEYS = {"id", "modify", "veto", "error"}


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[asyncio.Runner, int]]:
    """A listening module wire on its own loop (the runner each example runs on)."""
    config = container_config(free_port(), store=tmp_path_factory.mktemp("fuzz") / "s.db")
    container = Container(config, [PluginSource("wire_test", obj=wire_plugin)])
    container.load()
    with asyncio.Runner() as runner:
        runner.run(container.start())
        wire = module_wire(container)
        assert wire is not None
        lifespan = wire.lifespan()
        runner.run(lifespan.__aenter__())
        try:
            yield runner, config.module.port
        finally:
            runner.run(lifespan.__aexit__(None, None, None))
            runner.run(container.stop())
    print("\nhypothesis cases of the module wire:", dict(sorted(CASES.items())),
          f"({sum(CASES.values())} in all)")


# -- what is sent ---------------------------------------------------------------

text = st.text(max_size=30)
requests = st.fixed_dictionaries(
    {"op": st.sampled_from(["event", "join", "invite", "create_room", "connect", "hello",
                            "nonsense"]) | json_values},
    optional={
        "id": st.integers(min_value=-2**63, max_value=2**63) | json_values,
        "event": st.fixed_dictionaries(
            {"event_id": text, "room_id": text, "sender": text,
             "type": st.sampled_from(["m.room.message", "m.room.topic"]) | text,
             "content": st.dictionaries(st.sampled_from(["body", "topic", "msgtype"]),
                                        json_values, max_size=3),
             "origin_server_ts": st.integers(min_value=0, max_value=2**53)},
            optional={"unsigned": json_values}) | json_values,
        "user_id": text, "room_id": text, "inviter_id": text, "invitee_id": text,
        "device_id": text | st.none(), "request": json_values,
    },
)
"""Requests as a module might send them, and as it never should: JSON objects."""


def _is_object(body: bytes) -> bool:
    try:
        return type(json.loads(body)) is dict
    except ValueError:
        return False


#: (kind, bytes) of one frame after the hello
request_frames = requests.map(lambda request: ("request", encode(request)))
frames = st.one_of(
    request_frames,
    json_values.map(lambda value: frame(json.dumps(value).encode())),
    st.binary(max_size=60).map(frame),
    st.integers(min_value=MAX_FRAME + 1, max_value=2**32 - 1).map(HEADER.pack),
).map(lambda item: item if type(item) is tuple else _classify(item))


def _classify(data: bytes) -> tuple[str, bytes]:
    (length,) = HEADER.unpack_from(data)
    if length > MAX_FRAME:
        return "too large", data
    return ("request" if _is_object(data[HEADER.size:]) else "not json"), data


def _expected_id(data: bytes) -> Any:
    """The id an answer to this request frame carries: its integer ``id``, else ``None``."""
    request_id = json.loads(data[HEADER.size:]).get("id")
    return request_id if type(request_id) is int else None


def _pieces(stream: bytes, cuts: list[int]) -> list[bytes]:
    """``stream`` cut at ``cuts`` (positions, any order, clamped to it)."""
    points = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
    return [stream[a:b] for a, b in itertools.pairwise(points)]


# -- reading --------------------------------------------------------------------


async def _frames_until(reader: asyncio.StreamReader,
                        count: int | None) -> tuple[list[dict[str, Any]], bool]:
    """Read ``count`` answer frames (``None``: until the end of the stream); each must be
    whole and a JSON object. The frames, and whether the stream ended (a reset counts: the
    listener closed with bytes of the peer's still unread)."""
    answers: list[dict[str, Any]] = []
    try:
        while count is None or len(answers) < count:
            header = await asyncio.wait_for(reader.read(HEADER.size), WITHIN_S)
            if not header:
                return answers, True
            header += await asyncio.wait_for(reader.readexactly(HEADER.size - len(header)),
                                             WITHIN_S)
            (length,) = HEADER.unpack(header)
            answer = orjson.loads(await asyncio.wait_for(reader.readexactly(length), WITHIN_S))
            assert type(answer) is dict, answer
            answers.append(answer)
    except ConnectionError:  # reset, or the pipe the peer's own write broke
        return answers, True
    return answers, False


def _check_answer(answer: dict[str, Any]) -> None:
    assert set(answer) <= ANSWER_KEYS and "id" in answer, answer
    if "error" in answer:
        assert type(answer["error"].get("errcode")) is str, answer


@contextlib.asynccontextmanager
async def _sent(port: int, pieces: list[bytes], *,
                end: bool = False) -> AsyncIterator[tuple[asyncio.StreamReader,
                                                          asyncio.StreamWriter]]:
    """A connection to ``port`` that was sent ``pieces`` one at a time (then the end of the
    stream, with ``end``); the listener may close it meanwhile, and it stops sending."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        with contextlib.suppress(ConnectionError, OSError):
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.001)  # let the listener read this piece on its own
            if end:
                writer.write_eof()
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


# -- the properties -------------------------------------------------------------


@BUDGET
@given(data=st.binary(max_size=300) | st.lists(
    st.dictionaries(st.sampled_from(["op", "protocol", "secret", "id"]),
                    st.just("hello") | st.just(PROTOCOL_VERSION) | json_values, max_size=4)
    .map(encode), max_size=3).map(b"".join),
    cuts=st.lists(st.integers(min_value=0), max_size=4))
def test_anything_before_the_hello(port: tuple[asyncio.Runner, int], data: bytes,
                                   cuts: list[int]) -> None:
    """Bytes that are not the right hello: only error frames (no id), then the end of the
    stream once the peer's ends, within the bound; never an answer, never a hang."""
    runner, number = port
    CASES["before the hello"] += 1

    async def case() -> None:
        async with _sent(number, _pieces(data, cuts), end=True) as (reader, _):
            answers, ended = await _frames_until(reader, None)
        assert ended
        for answer in answers:
            assert answer.get("id") is None and type(answer["error"]["errcode"]) is str, answer

    runner.run(case())


@BUDGET
@given(sent=st.lists(frames, max_size=8) | st.lists(request_frames, max_size=8),
       cuts=st.lists(st.integers(min_value=0), max_size=6))
def test_frames_after_the_hello(port: tuple[asyncio.Runner, int],
                                sent: list[tuple[str, bytes]], cuts: list[int]) -> None:
    """After the hello, frames of any kind in any pieces: each JSON object before the first
    bad frame is answered once with its id; the first bad frame (not a JSON object, or
    longer than the limit) gets an error frame and the connection closes; with no bad
    frame the connection stays in step and answers the next request."""
    runner, number = port
    broken = next((i for i, (kind, _) in enumerate(sent) if kind != "request"), None)
    answered = sent if broken is None else sent[:broken]
    expected = collections.Counter(orjson.dumps(_expected_id(data)) for _, data in answered)
    CASES["after the hello: " + ("refused" if broken is not None else "kept open")] += 1

    async def case() -> None:
        stream = HELLO + b"".join(data for _, data in sent)
        async with _sent(number, _pieces(stream, cuts)) as (reader, writer):
            if broken is None:
                (hello,), _ = await _frames_until(reader, 1)
                assert hello == HELLO_ANSWER
                answers, _ = await _frames_until(reader, len(answered))
                writer.write(encode({"id": 7, "op": "join", "user_id": "@a:x",
                                     "room_id": "!r:x"}))
                assert (await _frames_until(reader, 1))[0] == [{"id": 7}]
            else:
                # a reset (the peer still writing after the refusal) may lose frames
                answers, ended = await _frames_until(reader, None)
                assert ended
                if answers and answers[0] == HELLO_ANSWER:
                    answers.pop(0)
        if broken is not None and answers and answers[-1]["id"] is None:
            refusal = answers.pop()
            errcode = "M_TOO_LARGE" if sent[broken][0] == "too large" else "M_NOT_JSON"
            assert refusal["error"]["errcode"] == errcode, refusal
        for answer in answers:
            _check_answer(answer)
        got = collections.Counter(orjson.dumps(answer["id"]) for answer in answers)
        if broken is None:
            assert got == expected
        else:  # answers still being decided when the connection closed are never sent
            assert not got - expected, (got, expected)

    runner.run(case())
