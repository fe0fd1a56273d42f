"""The appservice wire's answers to bad requests: auth, routing, JSON, shape, size."""

from __future__ import annotations

import pytest

from servletkit import hookimpl
from tests.appservice.support import AUTH, HS_TOKEN, new_event

ENDPOINTS = [
    ("PUT", "/_matrix/app/v1/transactions/1", {"events": []}),
    ("GET", "/_matrix/app/v1/users/@_x_a:localhost", None),
    ("GET", "/_matrix/app/v1/rooms/%23_x_a:localhost", None),
    ("POST", "/_matrix/app/v1/ping", {"transaction_id": "p"}),
    ("GET", "/_matrix/app/v1/thirdparty/protocol/irc", None),
    ("GET", "/_matrix/app/v1/thirdparty/user/irc", None),
    ("GET", "/_matrix/app/v1/thirdparty/location/irc", None),
    ("GET", "/_matrix/app/v1/thirdparty/user?userid=@a:localhost", None),
    ("GET", "/_matrix/app/v1/thirdparty/location?alias=%23a:localhost", None),
]


class Recorder:
    """Records the event ids it observes."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    def on_stored_event(self, event):
        self.seen.append(event.event_id)


def assert_error(response, status: int, errcode: str) -> None:
    assert (response.status_code, response.json()["errcode"]) == (status, errcode), response.text


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
async def test_missing_token_is_401(make_wire, method, path, body):
    """Every endpoint answers a request without a token with 401 M_MISSING_TOKEN."""
    _, client = await make_wire()
    assert_error(await client.request(method, path, json=body), 401, "M_MISSING_TOKEN")


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
async def test_wrong_token_is_403(make_wire, method, path, body):
    """Every endpoint answers a wrong token with 403 M_FORBIDDEN."""
    _, client = await make_wire()
    response = await client.request(method, path, json=body,
                                    headers={"Authorization": "Bearer not-the-token"})
    assert_error(response, 403, "M_FORBIDDEN")


async def test_token_forms(make_wire):
    """A non-Bearer header counts as missing; the legacy query token works; both must agree."""
    _, client = await make_wire()
    path = "/_matrix/app/v1/ping"
    assert_error(await client.post(path, json={}, headers={"Authorization": f"Basic {HS_TOKEN}"}),
                 401, "M_MISSING_TOKEN")
    assert (await client.post(f"{path}?access_token={HS_TOKEN}", json={})).status_code == 200
    assert_error(await client.post(f"{path}?access_token=other", json={}, headers=AUTH),
                 403, "M_FORBIDDEN")
    non_ascii = {"Authorization": "Bearer tökén".encode()}
    assert_error(await client.post(path, json={}, headers=non_ascii), 403, "M_FORBIDDEN")


async def test_unknown_path_and_wrong_method(make_wire):
    """An unknown path is 404 M_UNRECOGNIZED, a known one with the wrong method 405."""
    _, client = await make_wire()
    assert_error(await client.get("/_matrix/app/v1/nothing", headers=AUTH), 404, "M_UNRECOGNIZED")
    assert_error(await client.post("/_matrix/app/unstable/org.matrix.msc3983/keys/claim",
                                   json={}, headers=AUTH), 404, "M_UNRECOGNIZED")
    assert_error(await client.get("/_matrix/app/v1/transactions/1", headers=AUTH),
                 405, "M_UNRECOGNIZED")


@pytest.mark.parametrize("body", [b"", b"{", b"\xff\xfe", b"{'events': []}", b"NaN"])
async def test_malformed_json_is_400_not_json(make_wire, body):
    """A body that is not JSON is 400 M_NOT_JSON, and the transaction is not recorded."""
    container, client = await make_wire()
    response = await client.put("/_matrix/app/v1/transactions/t1", content=body, headers=AUTH)
    assert_error(response, 400, "M_NOT_JSON")
    assert await container.store.processed_digest("t1") is None


@pytest.mark.parametrize(
    "body",
    [[], "events", {}, {"events": {}}, {"events": None}, {"events": [], "ephemeral": {}},
     {"events": [], "de.sorunome.msc2409.to_device": "x"}],
)
async def test_wrong_shape_is_400_bad_json(make_wire, body):
    """JSON that is not a transaction object with an events array is 400 M_BAD_JSON."""
    container, client = await make_wire()
    response = await client.put("/_matrix/app/v1/transactions/t1", json=body, headers=AUTH)
    assert_error(response, 400, "M_BAD_JSON")
    assert await container.store.processed_digest("t1") is None


async def test_a_rejected_transaction_can_be_retried(make_wire):
    """After a 400 the same id with a good body is delivered (nothing was recorded)."""
    recorder = Recorder()
    _, client = await make_wire({"rec": recorder})
    path = "/_matrix/app/v1/transactions/t1"
    assert (await client.put(path, content=b"{", headers=AUTH)).status_code == 400
    good = new_event()
    assert (await client.put(path, json={"events": [good]}, headers=AUTH)).status_code == 200
    assert recorder.seen == [good["event_id"]]


async def test_too_large_by_content_length_is_413(make_wire):
    """A Content-Length over max_transaction_bytes is refused before reading: 413 M_TOO_LARGE."""
    container, client = await make_wire(max_transaction_bytes=1000)
    body = b'{"events": []}' + b" " * 1000
    response = await client.put("/_matrix/app/v1/transactions/t1", content=body, headers=AUTH)
    assert_error(response, 413, "M_TOO_LARGE")
    assert "max_transaction_bytes" in response.json()["error"]
    assert await container.store.processed_digest("t1") is None


async def test_too_large_streamed_is_413(make_wire):
    """A chunked body without Content-Length is cut off once it passes the limit."""
    _, client = await make_wire(max_transaction_bytes=1000)
    chunks_sent = []

    async def chunks():
        yield b'{"events": ['
        for _ in range(100):
            chunks_sent.append(1)
            yield b" " * 100

    response = await client.put("/_matrix/app/v1/transactions/t1", content=chunks(),
                                headers=AUTH)
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "M_TOO_LARGE")


async def test_body_at_the_limit_is_accepted(make_wire):
    """A body of exactly max_transaction_bytes is accepted."""
    _, client = await make_wire(max_transaction_bytes=100)
    body = b'{"events": []}'
    body += b" " * (100 - len(body))
    response = await client.put("/_matrix/app/v1/transactions/t1", content=body, headers=AUTH)
    assert response.status_code == 200


async def test_malformed_events_are_skipped_not_fatal(make_wire):
    """An event missing fields is logged and skipped; the others arrive; the answer is 200."""
    recorder = Recorder()
    _, client = await make_wire({"rec": recorder})
    good1, good2 = new_event(), new_event()
    bad = {"event_id": "$bad", "type": "m.room.message"}
    response = await client.put("/_matrix/app/v1/transactions/t1", headers=AUTH,
                                json={"events": [good1, bad, "not an object", good2]})
    assert response.status_code == 200
    assert recorder.seen == [good1["event_id"], good2["event_id"]]


async def test_ping(make_wire):
    """POST /ping answers {} with the right token; a body that is not an object is 400."""
    _, client = await make_wire()
    for body in ({"transaction_id": "abc"}, {"transaction_id": None}, {}):
        response = await client.post("/_matrix/app/v1/ping", json=body, headers=AUTH)
        assert (response.status_code, response.json()) == (200, {})
    assert_error(await client.post("/_matrix/app/v1/ping", json={"transaction_id": 5},
                                   headers=AUTH), 400, "M_BAD_JSON")
    assert_error(await client.post("/_matrix/app/v1/ping", content=b"[", headers=AUTH),
                 400, "M_NOT_JSON")


async def test_no_appservice_section_no_routes(tmp_path):
    """Without [appservice] the container serves no appservice routes."""
    from servletkit.container.app import build_app
    from servletkit.container.config import parse_config
    from servletkit.container.runtime import Container

    app = build_app(Container(parse_config({}, tmp_path / "servletkit.toml")))
    assert not [r for r in app.routes if getattr(r, "path", "").startswith("/_matrix/app")]
