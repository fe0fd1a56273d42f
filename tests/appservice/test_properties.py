"""Property-based tests (hypothesis) of every appservice endpoint: whatever arrives, the
answer is never a 5xx, never a redirect, comes within a bound, and every error carries a
Matrix errcode.

The budget is :data:`tests.fuzz.BUDGET` per endpoint (``SERVLETKIT_FUZZ_EXAMPLES``, 100
by default). The case counts are printed at the end (``-s``).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from servletkit import Veto, hookimpl
from servletkit.container.app import build_app
from servletkit.container.plugins import PluginSource
from servletkit.container.runtime import Container
from tests.appservice.support import AUTH, HS_TOKEN, container_config
from tests.fuzz import BUDGET, Client, check, json_values

CASES: collections.Counter[str] = collections.Counter()


class Answers:
    """Answers every query hook and vetoes some events, so the plugin paths run too."""

    @hookimpl
    def on_send_event(self, event):
        return Veto("no") if "veto" in str(event.content.get("body")) else None

    @hookimpl
    def on_stored_event(self, event):
        return None

    @hookimpl
    def on_query_user(self, user_id):
        return user_id.endswith(":localhost")

    @hookimpl
    def on_query_alias(self, alias):
        return None


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    tmp_path: Path = tmp_path_factory.mktemp("properties")
    config = container_config(tmp_path, {"answers": None})
    container = Container(config, [PluginSource("answers", obj=Answers())])
    container.load()
    with asyncio.Runner() as runner:
        runner.run(container.start())
        transport = httpx.ASGITransport(app=build_app(container), raise_app_exceptions=False)
        http = httpx.AsyncClient(transport=transport, base_url="http://container")
        try:
            yield Client(runner, http)
        finally:
            runner.run(http.aclose())
            runner.run(container.stop())
    print("\nhypothesis cases per endpoint:", dict(sorted(CASES.items())),
          f"({sum(CASES.values())} in all)")


events = st.fixed_dictionaries(
    {"event_id": st.text(max_size=20), "room_id": st.text(max_size=20),
     "type": st.sampled_from(["m.room.message", "m.room.member"]) | st.text(max_size=10),
     "sender": st.text(max_size=20), "origin_server_ts": st.integers() | json_values,
     "content": st.dictionaries(st.sampled_from(["body", "msgtype", "membership"]),
                                json_values | st.just("veto"), max_size=3)},
) | json_values
identifiers = st.text(max_size=40)
# what a header can carry: printable ASCII
tokens = st.sampled_from([HS_TOKEN, "", "wrong", HS_TOKEN + "x"]) | st.text(
    st.characters(min_codepoint=33, max_codepoint=126), max_size=20)


@BUDGET
@given(txn_id=st.text(min_size=1, max_size=30), body=st.dictionaries(
    st.sampled_from(["events", "ephemeral", "de.sorunome.msc2409.ephemeral", "to_device"]),
    st.lists(events, max_size=5) | json_values, max_size=3) | json_values)
def test_transactions(client: Client, txn_id: str, body: Any) -> None:
    check(CASES, "PUT transactions", lambda: client.put(
        f"/_matrix/app/v1/transactions/{quote(txn_id, safe='')}", json=body, headers=AUTH))


@BUDGET
@given(body=st.binary(max_size=200))
def test_transaction_bodies_that_are_not_json(client: Client, body: bytes) -> None:
    check(CASES, "PUT transactions (bytes)", lambda: client.put(
        "/_matrix/app/v1/transactions/b", content=body, headers=AUTH))


@BUDGET
@given(kind=st.sampled_from(["users", "rooms"]), identifier=identifiers, token=tokens,
       in_query=st.booleans())
def test_queries(client: Client, kind: str, identifier: str, token: str,
                 in_query: bool) -> None:
    headers = {} if in_query else {"Authorization": f"Bearer {token}"}
    params = {"access_token": token} if in_query else {}
    check(CASES, f"GET {kind}", lambda: client.get(
        f"/_matrix/app/v1/{kind}/{quote(identifier, safe='')}", headers=headers, params=params))


@BUDGET
@given(body=json_values, token=tokens)
def test_ping(client: Client, body: Any, token: str) -> None:
    check(CASES, "POST ping", lambda: client.post("/_matrix/app/v1/ping", json=body,
                                           headers={"Authorization": f"Bearer {token}"}))


@BUDGET
@given(path=st.sampled_from(["protocol/{p}", "user/{p}", "location/{p}", "user", "location"]),
       protocol=identifiers, params=st.dictionaries(st.text(max_size=10),
                                                    st.text(max_size=20), max_size=3))
def test_thirdparty(client: Client, path: str, protocol: str,
                    params: dict[str, str]) -> None:
    check(CASES, "GET thirdparty", lambda: client.get(
        f"/_matrix/app/v1/thirdparty/{path.format(p=quote(protocol, safe=''))}", params=params,
        headers=AUTH))
