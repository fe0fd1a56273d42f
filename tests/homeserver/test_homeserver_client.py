"""HomeserverClient against a fake homeserver (httpx.MockTransport): retries, errors, quoting."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import httpx
import pytest

from servletkit.wires.appservice.homeserver import HomeserverClient, MatrixRequestError

TOKEN = "as-secret-token-123"


def make_client(handler: Callable[[httpx.Request], httpx.Response], **kwargs) -> HomeserverClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return HomeserverClient("http://hs.test/", TOKEN, "example.org", "bot", http=http, **kwargs)


class Recorder:
    """A fake homeserver: answers with queued responses and records what it got."""

    def __init__(self, *responses: httpx.Response) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.responses.pop(0) if self.responses else httpx.Response(200, json={})


def limited(retry_after_ms: int | None = None, headers: dict | None = None) -> httpx.Response:
    body = {"errcode": "M_LIMIT_EXCEEDED", "error": "Too Many Requests"}
    if retry_after_ms is not None:
        body["retry_after_ms"] = retry_after_ms
    return httpx.Response(429, json=body, headers=headers)


class TestRateLimits:
    async def test_retries_after_retry_after_ms(self, monkeypatch):
        """A 429 is retried after the body's retry_after_ms, then the answer is returned."""
        slept = []
        monkeypatch.setattr("asyncio.sleep", fake_sleep(slept))
        hs = Recorder(limited(250), limited(100), httpx.Response(200, json={"event_id": "$e"}))
        client = make_client(hs)
        assert await client.send_message("!r:example.org", "hi", txn_id="t1") == "$e"
        assert slept == [0.25, 0.1]
        assert len(hs.requests) == 3
        assert {r.url.path for r in hs.requests} == {
            "/_matrix/client/v3/rooms/!r:example.org/send/m.room.message/t1"
        }

    async def test_retry_after_header(self, monkeypatch):
        """Without retry_after_ms the Retry-After header (seconds) is honoured."""
        slept = []
        monkeypatch.setattr("asyncio.sleep", fake_sleep(slept))
        hs = Recorder(limited(headers={"Retry-After": "2"}), httpx.Response(200, json={}))
        await make_client(hs).request("GET", "/_matrix/client/v3/account/whoami")
        assert slept == [2.0]

    async def test_bounded_retries(self, monkeypatch):
        """After max_retries the 429 is raised as M_LIMIT_EXCEEDED."""
        slept = []
        monkeypatch.setattr("asyncio.sleep", fake_sleep(slept))
        hs = Recorder(*[limited(10)] * 10)
        with pytest.raises(MatrixRequestError) as info:
            await make_client(hs, max_retries=3).request("GET", "/_matrix/client/v3/x")
        assert (info.value.status, info.value.errcode) == (429, "M_LIMIT_EXCEEDED")
        assert len(hs.requests) == 4
        assert slept == [0.01] * 3

    async def test_bounded_total_wait(self, monkeypatch):
        """A wait that would exceed max_retry_wait is not taken: the 429 is raised at once."""
        slept = []
        monkeypatch.setattr("asyncio.sleep", fake_sleep(slept))
        hs = Recorder(limited(4000), limited(4000), httpx.Response(200, json={}))
        with pytest.raises(MatrixRequestError) as info:
            await make_client(hs, max_retry_wait=5).request("GET", "/_matrix/client/v3/x")
        assert info.value.body["retry_after_ms"] == 4000
        assert slept == [4.0]
        assert len(hs.requests) == 2


def fake_sleep(record: list[float]):
    async def sleep(seconds: float) -> None:
        record.append(seconds)

    return sleep


class TestErrors:
    async def test_matrix_error(self):
        """A Matrix error body becomes status, errcode, error and body on the exception."""
        body = {"errcode": "M_FORBIDDEN", "error": "You are not invited to this room."}
        client = make_client(Recorder(httpx.Response(403, json=body)))
        with pytest.raises(MatrixRequestError) as info:
            await client.join("!nope:example.org")
        exc = info.value
        assert (exc.status, exc.errcode, exc.error, exc.body) == (
            403, "M_FORBIDDEN", "You are not invited to this room.", body)
        assert str(exc) == ("POST /_matrix/client/v3/join/%21nope%3Aexample.org -> "
                            "403 M_FORBIDDEN: You are not invited to this room.")

    @pytest.mark.parametrize(
        ("response", "error"),
        [
            (httpx.Response(502, text="<html>Bad Gateway</html>"), "<html>Bad Gateway</html>"),
            (httpx.Response(500, content=b""), "Internal Server Error"),
            (httpx.Response(400, json=["not", "an", "object"]), "['not', 'an', 'object']"),
        ],
    )
    async def test_non_matrix_error_bodies(self, response, error):
        """Error bodies that are not Matrix errors give M_UNKNOWN with the text."""
        with pytest.raises(MatrixRequestError) as info:
            await make_client(Recorder(response)).request("GET", "/_matrix/client/v3/x")
        assert (info.value.status, info.value.errcode, info.value.error) == (
            response.status_code, "M_UNKNOWN", error)

    async def test_success_that_is_not_json(self):
        """A 200 whose body is not JSON is an error, not a crash later."""
        client = make_client(Recorder(httpx.Response(200, text="OK")))
        with pytest.raises(MatrixRequestError) as info:
            await client.request("GET", "/_matrix/client/v3/x")
        assert info.value.errcode == "M_NOT_JSON"

    async def test_a_json_array_is_read(self):
        """Some endpoints answer an array (GET /rooms/{id}/state): it is returned as is."""
        state = [{"type": "m.room.create", "state_key": "", "content": {}}]
        client = make_client(Recorder(httpx.Response(200, json=state)))
        assert await client.get_room_state("!r:example.org") == state

    async def test_token_never_in_errors_or_logs(self, caplog):
        """The as_token is sent as a header only; it is in no message, repr or log record."""
        caplog.set_level(logging.DEBUG)
        hs = Recorder(httpx.Response(401, json={"errcode": "M_UNKNOWN_TOKEN", "error": "no"}))
        client = make_client(hs).as_user("@_x_a:example.org")
        with pytest.raises(MatrixRequestError) as info:
            await client.send_message("!r:example.org", "hi")
        assert hs.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"
        assert TOKEN not in str(hs.requests[0].url)
        assert TOKEN not in str(info.value) + repr(client) + caplog.text
        assert caplog.records  # something was logged, and none of it the token


class TestRequests:
    async def test_path_parameters_are_quoted(self):
        """Room IDs, aliases, event IDs and state keys are percent-encoded as one segment."""
        hs = Recorder(*[httpx.Response(200, json={"event_id": "$x", "room_id": "!r"})] * 4)
        client = make_client(hs)
        await client.join("#a/b:example.org")
        await client.redact("!r:example.org", "$ev/1+2", txn_id="t 1")
        await client.send_state("!r:example.org", "m.room.member", "@u:example.org", {})
        await client.send_state("!r:example.org", "m.room.name", "", {"name": "n"})
        assert [r.url.raw_path.decode() for r in hs.requests] == [
            "/_matrix/client/v3/join/%23a%2Fb%3Aexample.org",
            "/_matrix/client/v3/rooms/%21r%3Aexample.org/redact/%24ev%2F1%2B2/t%201",
            "/_matrix/client/v3/rooms/%21r%3Aexample.org/state/m.room.member/%40u%3Aexample.org",
            "/_matrix/client/v3/rooms/%21r%3Aexample.org/state/m.room.name/",
        ]

    async def test_as_user_masquerades_and_shares_the_pool(self):
        """as_user adds ?user_id=, keeps the same httpx client; the sender adds nothing."""
        hs = Recorder()
        client = make_client(hs)
        romeo = client.as_user("@_x_romeo:example.org")
        assert romeo._http is client._http
        assert (client.user_id, romeo.user_id) == ("@bot:example.org", "@_x_romeo:example.org")
        await romeo.set_displayname("Romeo")
        await client.set_displayname("Bot")
        assert hs.requests[0].url.params["user_id"] == "@_x_romeo:example.org"
        assert hs.requests[0].url.path == (
            "/_matrix/client/v3/profile/@_x_romeo:example.org/displayname")
        assert json.loads(hs.requests[0].content) == {"displayname": "Romeo"}
        assert "user_id" not in hs.requests[1].url.params

    def test_as_user_needs_a_user_id(self):
        """A bare localpart is refused with a message saying what is expected."""
        with pytest.raises(ValueError, match="full user ID"):
            make_client(Recorder()).as_user("romeo")

    async def test_send_event_with_ts(self):
        """ts is passed as the appservice timestamp-massaging query parameter."""
        hs = Recorder(httpx.Response(200, json={"event_id": "$e"}))
        await make_client(hs).send_event("!r:x", "m.custom", {"a": 1}, txn_id="t", ts=1234)
        assert hs.requests[0].method == "PUT"
        assert hs.requests[0].url.params["ts"] == "1234"

    async def test_register_is_idempotent(self):
        """M_USER_IN_USE counts as registered; other errors are raised."""
        in_use = httpx.Response(400, json={"errcode": "M_USER_IN_USE", "error": "taken"})
        exclusive = httpx.Response(400, json={"errcode": "M_EXCLUSIVE", "error": "no"})
        hs = Recorder(httpx.Response(200, json={"user_id": "@_x_a:example.org"}), in_use,
                      exclusive)
        client = make_client(hs)
        assert await client.register("_x_a") == "@_x_a:example.org"
        assert await client.register("_x_a") == "@_x_a:example.org"
        with pytest.raises(MatrixRequestError, match="M_EXCLUSIVE"):
            await client.register("other")
        assert json.loads(hs.requests[0].content)["type"] == "m.login.application_service"
        assert all("user_id" not in r.url.params for r in hs.requests)

    async def test_ensure_registered_registers_once(self):
        """ensure_registered asks the homeserver once per user, across clones."""
        hs = Recorder()
        client = make_client(hs)
        await client.as_user("@_x_a:example.org").ensure_registered()
        await client.as_user("@_x_a:example.org").ensure_registered()
        assert len(hs.requests) == 1

    async def test_upload_media(self):
        """upload_media posts the raw bytes with their type and returns the mxc URI."""
        hs = Recorder(httpx.Response(200, json={"content_uri": "mxc://example.org/abc"}))
        uri = await make_client(hs).upload_media(b"\x89PNG", "image/png", "a b.png")
        assert uri == "mxc://example.org/abc"
        request = hs.requests[0]
        assert (request.content, request.headers["Content-Type"]) == (b"\x89PNG", "image/png")
        assert request.url.params["filename"] == "a b.png"

    async def test_owned_pool_is_closed(self):
        """aclose closes the pool the client made itself, not one handed in."""
        own = HomeserverClient("http://hs.test", TOKEN, "example.org", "bot")
        await own.aclose()
        assert own._http.is_closed
        shared = make_client(Recorder())
        await shared.aclose()
        assert not shared._http.is_closed
        await shared._http.aclose()
