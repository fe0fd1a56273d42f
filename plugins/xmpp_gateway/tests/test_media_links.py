"""Which XMPP messages share a file, and which links the gateway refuses to fetch."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import httpcore
import httpx
import pytest
from servletkit_xmpp_gateway.media import content_in, fetch, read
from servletkit_xmpp_gateway.pinned import Resolve
from slixmpp import Message
from slixmpp.plugins.xep_0066.stanza import OOB
from slixmpp.xmlstream import register_stanza_plugin

from servletkit.testing.synapse import free_port

register_stanza_plugin(Message, OOB)
PUBLIC = "93.184.216.34"  # a global address (never connected to: the test stops it)


def _message(body: str, oob: str | None = None) -> Message:
    msg = Message()
    msg["body"] = body
    if oob is not None:
        msg["oob"]["url"] = oob
    return msg


@pytest.mark.parametrize(("body", "oob", "url"), [
    ("https://a.example/cat.PNG", None, "https://a.example/cat.PNG"),
    ("look: https://a.example/cat.png", None, None),  # more than a link
    ("https://a.example/page", None, None),  # not an image
    ("https://a.example/doc.pdf", "https://a.example/doc.pdf", "https://a.example/doc.pdf"),
    ("see attached", "ftp://a.example/doc.pdf", None),  # only http(s)
])
def test_what_counts_as_a_shared_file(body: str, oob: str | None, url: str | None) -> None:
    """An OOB URL (any file), or a body that is only a link to an image."""
    assert read(_message(body, oob), body) == url


async def test_loopback_and_private_links_are_not_fetched(
        caplog: pytest.LogCaptureFixture) -> None:
    """An XMPP user cannot make the gateway read internal URLs (unless allowed)."""
    bridge = SimpleNamespace(config=SimpleNamespace(fetch_private_media=False),
                             log=logging.getLogger("xmpp-media-test"))
    caplog.set_level(logging.INFO, "xmpp-media-test")
    for url in ("http://127.0.0.1:9/x.png", "http://10.1.2.3/x.png", "http://[::1]/x.png"):
        assert await content_in(bridge, "@u:localhost", url) is None  # type: ignore[arg-type]
    assert caplog.text.count("is a local address") == 3


class _Recorder(BaseHTTPRequestHandler):
    """Answers every GET with ``cat`` and keeps the Host header it was sent."""

    hosts: list[str] = []

    def do_GET(self) -> None:
        self.hosts.append(self.headers["Host"])
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"cat")

    def log_message(self, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def local_server() -> Iterator[tuple[int, list[str]]]:
    """An HTTP server on 127.0.0.1: its port and the Host headers it received."""
    hosts: list[str] = []
    handler = type("Recorder", (_Recorder,), {"hosts": hosts})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], hosts
    finally:
        server.shutdown()
        server.server_close()


def _resolver(*answers: str) -> tuple[list[str], Resolve]:
    """A fake resolver giving ``answers`` in turn (the last one after that), and the log
    of the hosts it was asked for."""
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return [answers[min(len(asked), len(answers)) - 1]]
    return asked, resolve


async def test_a_host_that_rebinds_to_a_local_address_is_not_fetched(
        local_server: tuple[int, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """First public, then loopback: the fetch connects to the checked public address
    (resolved once), never to the loopback server the second answer names."""
    port, hosts = local_server
    connects: list[str] = []
    real_connect = httpcore.AnyIOBackend.connect_tcp

    async def connect(self: httpcore.AnyIOBackend, host: str, port: int,
                      **kwargs: object) -> httpcore.AsyncNetworkStream:
        connects.append(host)
        if host == PUBLIC:  # offline test: stand for an unreachable public server
            raise httpcore.ConnectError("unreachable (test)")
        return await real_connect(self, host, port, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", connect)
    asked, resolve = _resolver(PUBLIC, "127.0.0.1")
    with pytest.raises(httpx.ConnectError):
        await fetch(f"http://rebind.test:{port}/cat.png", False, resolve)
    assert asked == ["rebind.test"] and connects == [PUBLIC] and hosts == []

    asked, resolve = _resolver("127.0.0.1")  # local from the start: refused before connecting
    with pytest.raises(httpx.TransportError, match="is a local address"):
        await fetch(f"http://local.test:{port}/cat.png", False, resolve)
    assert connects == [PUBLIC] and hosts == []


async def test_the_pinned_fetch_keeps_the_host_name(
        local_server: tuple[int, list[str]]) -> None:
    """Connected to the resolved address, the request still names the host (Host header;
    SNI likewise for https), so virtual hosts and certificates work."""
    port, hosts = local_server
    _, resolve = _resolver("127.0.0.1")
    data, mimetype = await fetch(f"http://files.test:{port}/cat.png", True, resolve)
    assert (data, mimetype) == (b"cat", "image/png") and hosts == [f"files.test:{port}"]
