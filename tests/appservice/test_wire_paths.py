"""Identifiers with ``/`` (legal in alias localparts and user IDs' localparts) reach the
query hooks, over a real HTTP server, encoded or not, and never redirect elsewhere."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from servletkit import hookimpl
from tests.appservice.serving import served
from tests.appservice.support import AUTH


class Knows:
    """Provides exactly one alias and one user, and records what it was asked about."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    @hookimpl
    def on_query_alias(self, alias):
        self.asked.append(alias)
        return alias == "#_x_a/b:localhost"

    @hookimpl
    def on_query_user(self, user_id):
        self.asked.append(user_id)
        return user_id == "@_x_a/b:localhost"


@pytest.mark.parametrize(("kind", "subject"), [("rooms", "#_x_a/b:localhost"),
                                               ("users", "@_x_a/b:localhost")])
async def test_slash_in_identifier(make_wire, kind, subject):
    """``/`` percent-encoded (as homeservers send it) or not: the hook gets the whole
    identifier, and an unknown one is a 404, never a redirect to another identifier."""
    plugin = Knows()
    container, _ = await make_wire({"knows": plugin})
    async with served(container) as client:
        encoded = await client.get(f"/_matrix/app/v1/{kind}/{quote(subject, safe='')}",
                                   headers=AUTH)
        plain = await client.get(f"/_matrix/app/v1/{kind}/{quote(subject, safe='/')}",
                                 headers=AUTH)
        trailing = await client.get(f"/_matrix/app/v1/{kind}/{quote(subject + '/', safe='')}",
                                    headers=AUTH)
        other = f"{subject[0]}_x_c:localhost/"  # without its '/', another identifier
        redirect = await client.get(f"/_matrix/app/v1/{kind}/{quote(other, safe='')}",
                                    headers=AUTH)
        empty = await client.get(f"/_matrix/app/v1/{kind}/", headers=AUTH)
    assert (encoded.status_code, plain.status_code) == (200, 200)
    assert (trailing.status_code, trailing.json()["errcode"]) == (404, "M_NOT_FOUND")
    assert (redirect.status_code, redirect.json()["errcode"]) == (404, "M_NOT_FOUND")
    assert empty.status_code == 404
    assert plugin.asked == [subject, subject, subject + "/", other]
