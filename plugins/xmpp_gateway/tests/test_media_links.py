"""Which XMPP messages share a file, and which links the gateway refuses to fetch."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from servletkit_xmpp_gateway.media import content_in, read
from slixmpp import Message
from slixmpp.plugins.xep_0066.stanza import OOB
from slixmpp.xmlstream import register_stanza_plugin

register_stanza_plugin(Message, OOB)


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
