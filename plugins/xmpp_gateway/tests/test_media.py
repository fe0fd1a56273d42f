"""Media: Matrix files as links with XEP-0066 out-of-band data, and XMPP links to files
as Matrix media (real Synapse, real Prosody, a file server on loopback)."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from servletkit.testing.synapse import free_port

pytestmark = pytest.mark.integration

ROOM = "media@conference.localhost"
ALIAS = "#_xmpp_media_conference.localhost:localhost"
HUMAN = "@_xmpp_human=40localhost:localhost"
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(2048)  # a PNG signature is all a client sniffs


@pytest.fixture
def files(tmp_path: Path) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 serving ``cat.png``; its base URL."""
    (tmp_path / "cat.png").write_bytes(PNG)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_matrix_image_arrives_as_a_link_with_oob_data(gateway, matrix_user,
                                                           xmpp_user) -> None:
    """An m.image becomes a body that is exactly its link, with the link as OOB data; the
    link serves the file (from the authenticated media API), other tokens are 404."""
    vera = await matrix_user("Vera")
    room_id = await vera.join(ALIAS)
    human = await xmpp_user("human")
    await human.join(ROOM, "human")
    upload = await vera.http.post("/_matrix/media/v3/upload", content=PNG,
                                  params={"filename": "cat.png"},
                                  headers={"Content-Type": "image/png"})
    assert upload.is_success, upload.text
    await vera.send_event(room_id, "m.room.message", {
        "msgtype": "m.image", "body": "my cat", "filename": "cat.png",
        "url": upload.json()["content_uri"], "info": {"mimetype": "image/png",
                                                      "size": len(PNG)}})

    got = await human.wait_message(lambda m: m["oob"]["url"] != "")
    link = got["oob"]["url"]
    assert got["body"] == link and got["oob"]["desc"] == "my cat"
    assert got["from"] == f"{ROOM}/Vera"
    assert link.startswith(f"{gateway.url}/_servletkit/plugins/xmpp_gateway/media/")
    async with httpx.AsyncClient() as http:
        fetched = await http.get(link)
        assert fetched.status_code == 200 and fetched.content == PNG
        assert fetched.headers["content-type"] == "image/png"
        forged = await http.get(link.replace("/media/", "/media/x"))
        assert forged.status_code == 404 and forged.json()["errcode"] == "M_NOT_FOUND"
    notices = [e for e in await vera.messages(room_id) if e["content"].get("msgtype")
               == "m.notice"]
    assert not notices  # not "cannot be carried" any more


async def test_xmpp_links_to_files_become_matrix_media(gateway, matrix_user, xmpp_user,
                                                       files: str) -> None:
    """An OOB URL, and a body that is only a link to an image, arrive as an m.image
    uploaded to the media repository; any other link stays text."""
    wes = await matrix_user("Wes")
    room_id = await wes.join(ALIAS)
    human = await xmpp_user("human")
    await human.join(ROOM, "human")
    url = f"{files}/cat.png"
    shared = human.compose(ROOM, url)
    shared["oob"]["url"] = url
    shared.send()
    human.say(ROOM, f"{files}/cat.png?again")
    human.say(ROOM, "https://example.org/page")

    images = []
    for _ in range(2):
        images.append(await wes.wait_message(room_id, lambda e: e["sender"] == HUMAN and (
            e["content"].get("msgtype") == "m.image" and e not in images)))
    for event in images:
        content = event["content"]
        assert content["body"] == "cat.png"
        assert content["info"] == {"mimetype": "image/png", "size": len(PNG)}
        server, media_id = content["url"].removeprefix("mxc://").split("/")
        data = await wes.http.get(f"/_matrix/client/v1/media/download/{server}/{media_id}")
        assert data.content == PNG
    text = await wes.wait_message(room_id, lambda e: "example.org" in e["content"]["body"])
    assert text["content"]["msgtype"] == "m.text"
