"""Property-based tests (hypothesis) of every policy wire endpoint: whatever arrives,
signed by a known server (in canonical JSON) or not, the answer is never a 5xx nor a
redirect, comes within a bound, and every error carries the errcode the spec (or
docs/policy-wire.md) gives for it.

The budget is :data:`tests.fuzz.BUDGET` per endpoint (``SERVLETKIT_FUZZ_EXAMPLES``, 100
by default). The case counts are printed at the end (``-s``).
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from signedjson.key import decode_verify_key_base64
from signedjson.sign import verify_signed_json

from servletkit import Veto, hookimpl
from servletkit.container.config import parse_config
from servletkit.container.plugins import PluginSource
from servletkit.container.runtime import Container
from servletkit.testing import only_plugins
from servletkit.wires.policy.keys import load_keys
from servletkit.wires.policy.pdu import ROOM_VERSIONS, redact
from servletkit.wires.policy.rooms import Rooms
from servletkit.wires.policy.wire import PolicyWire
from tests.fuzz import BUDGET, Client, canonical_json_values, check, json_values
from tests.policy.support import POLICY, REMOTE, ROOM, FakeSrv, RemoteServer

CASES: collections.Counter[str] = collections.Counter()
SIGN = "/_matrix/policy/v1/sign"
REFUSAL = "no shouting here"


class Refuses:
    """Vetoes events whose body says "veto", so the plugin path runs too."""

    @hookimpl
    def on_send_event(self, event):
        return Veto(REFUSAL) if "veto" in str(event.content.get("body")) else None


class Setup:
    def __init__(self, client: Client, wire: PolicyWire, remote: RemoteServer) -> None:
        self.client, self.wire, self.remote = client, wire, remote

    def signed(self, method: str, uri: str, body: Any) -> httpx.Response:
        """``body`` sent to ``uri`` by the remote server, with a valid X-Matrix header."""
        return self.client.request(method, uri, content=json.dumps(body),
                                   headers=self.remote.headers(method, uri, body))


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp_path: Path = tmp_path_factory.mktemp("policy-properties")
    config = parse_config({
        "policy": {"server_name": POLICY},
        "store": {"path": str(tmp_path / "s.db")},
        "plugins": only_plugins({"refuses": {"timeout_ms": 2000}}),
    }, tmp_path / "servletkit.toml")
    container = Container(config, [PluginSource("refuses", obj=Refuses())])
    container.load()
    remote = RemoteServer()
    with asyncio.Runner() as runner:
        runner.run(container.start())
        http = httpx.AsyncClient(transport=remote.transport())
        rooms = Rooms(container.store, tmp_path / "policy")
        runner.run(rooms.add(ROOM, "12", "joined", REMOTE))
        wire = PolicyWire(container.dispatcher, POLICY, load_keys(tmp_path / "policy"), rooms,
                          server_urls={REMOTE: f"http://{REMOTE}"}, ready=container.ready,
                          http=http, srv=FakeSrv({}))  # no real DNS in tests
        client = httpx.AsyncClient(transport=httpx.ASGITransport(
            app=wire.app, raise_app_exceptions=False), base_url=f"https://{POLICY}")
        try:
            yield Setup(Client(runner, client), wire, remote)
        finally:
            for task in list(wire._background):
                task.cancel()
            runner.run(client.aclose())
            runner.run(http.aclose())
            runner.run(container.stop())
    print("\nhypothesis cases per endpoint:", dict(sorted(CASES.items())),
          f"({sum(CASES.values())} in all)")


def errcode(answer: httpx.Response) -> tuple[int, str | None]:
    return answer.status_code, answer.json().get("errcode") if answer.status_code >= 400 else None


# what a header can carry: printable ASCII, X-Matrix-like or not
headers = st.one_of(
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
    st.builds(lambda origin, key, sig: f'X-Matrix origin="{origin}",destination="{POLICY}",'
              f'key="{key}",sig="{sig}"',
              st.sampled_from([REMOTE, "unknown.test", ""]) | st.text(
                  st.characters(min_codepoint=97, max_codepoint=122), max_size=10),
              st.sampled_from(["ed25519:a_remote", "ed25519:other", "x"]),
              st.text(st.characters(min_codepoint=43, max_codepoint=122), max_size=90)))
sign_paths = st.sampled_from([SIGN, "/_matrix/policy/unstable/org.matrix.msc4284/sign"])


@BUDGET
@given(path=sign_paths, body=json_values, header=headers)
def test_sign_unauthenticated(policy: Setup, path: str, body: Any, header: str) -> None:
    """Without a valid X-Matrix signature: 401 M_UNAUTHORIZED, whatever the body."""
    answer = check(CASES, "POST sign (unsigned)", lambda: policy.client.post(
        path, content=json.dumps(body), headers={"Authorization": header}))
    assert errcode(answer) == (401, "M_UNAUTHORIZED"), answer.text


@BUDGET
@given(body=st.binary(max_size=200))
def test_sign_bodies_that_are_not_json(policy: Setup, body: bytes) -> None:
    """Bytes: 400 M_NOT_JSON, or (if they happen to be JSON) 401 M_UNAUTHORIZED."""
    answer = check(CASES, "POST sign (bytes)", lambda: policy.client.post(
        SIGN, content=body, headers={"Authorization": "X-Matrix origin=x"}))
    assert errcode(answer) in ((400, "M_NOT_JSON"), (401, "M_UNAUTHORIZED")), answer.text


@BUDGET
@given(body=canonical_json_values)
def test_sign_signed_bodies_that_are_not_pdus(policy: Setup, body: Any) -> None:
    """From a known server, a body that is no PDU: 400 M_BAD_JSON."""
    answer = check(CASES, "POST sign (signed, any JSON)", lambda: policy.signed(
        "POST", SIGN, body))
    assert errcode(answer) == (400, "M_BAD_JSON"), answer.text


HASHED = ("room_id", "type", "sender", "content", "origin_server_ts", "hashes", "depth")


@BUDGET
@given(field=st.sampled_from([*HASHED, "unsigned", "state_key", "prev_events"]),
       value=canonical_json_values, text=st.text(max_size=30) | st.just("veto this"))
def test_sign_signed_pdus(policy: Setup, field: str, value: Any, text: str) -> None:
    """From a known server, a real PDU with one field replaced: a signature by the policy
    key over the redacted event (200), or the errcode that says why not: M_BAD_JSON
    (malformed, or its content hash no longer matches), M_NOT_FOUND (a room not served),
    M_FORBIDDEN (the plugin's veto, with its reason; or, for another sender, no valid
    signature by that sender's server)."""
    pdu = policy.remote.pdu(text)
    changed = pdu.get(field) != value
    pdu[field] = value
    answer = check(CASES, "POST sign (signed PDUs)", lambda: policy.signed("POST", SIGN, pdu))
    code = errcode(answer)
    assert code in ((200, None), (400, "M_BAD_JSON"), (404, "M_NOT_FOUND"),
                    (400, "M_FORBIDDEN")), answer.text
    if changed and field in HASHED and field != "depth":
        assert code != (200, None), f"{field} changed to {value!r} and still signed"
    if code == (400, "M_FORBIDDEN") and field != "sender":  # (else: not signed by its server)
        assert answer.json()["error"] == REFUSAL and "veto" in text
    if code == (200, None):
        keys = policy.wire.keys
        key = decode_verify_key_base64("ed25519", "policy_server", keys.policy_public_key)
        signed = {**redact(pdu, ROOM_VERSIONS["12"]), "signatures": answer.json()}
        verify_signed_json(signed, POLICY, key)
        assert "veto" not in text


@BUDGET
@given(txn_id=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1,
                      max_size=20).filter(lambda text: text not in (".", "..")),
       body=st.fixed_dictionaries({"pdus": st.lists(canonical_json_values, max_size=4)})
       | canonical_json_values)
def test_send(policy: Setup, txn_id: str, body: Any) -> None:
    """A federation transaction of any PDUs: 200 with a result for each PDU it could
    identify, or 400 M_BAD_JSON when there is no ``pdus`` array."""
    uri = f"/_matrix/federation/v1/send/{quote(txn_id, safe='')}"
    answer = check(CASES, "PUT send", lambda: policy.signed("PUT", uri, body))
    assert errcode(answer) in ((200, None), (400, "M_BAD_JSON")), answer.text
    if answer.status_code == 200:
        assert isinstance(answer.json()["pdus"], dict)


@BUDGET
@given(v2=st.booleans(), body=canonical_json_values | st.fixed_dictionaries(
    {"room_version": st.sampled_from(["12", "1", "99"]) | canonical_json_values,
     "event": canonical_json_values}))
def test_invites(policy: Setup, v2: bool, body: Any) -> None:
    """An invite of anything: 400 M_BAD_JSON or M_INCOMPATIBLE_ROOM_VERSION, or 403
    M_FORBIDDEN (not an invite of the policy user)."""
    uri = f"/_matrix/federation/{'v2' if v2 else 'v1'}/invite/{quote(ROOM)}/%24e"
    answer = check(CASES, f"PUT invite {'v2' if v2 else 'v1'}",
                   lambda: policy.signed("PUT", uri, body))
    assert errcode(answer) in ((400, "M_BAD_JSON"), (400, "M_INCOMPATIBLE_ROOM_VERSION"),
                               (403, "M_FORBIDDEN")), answer.text


@BUDGET
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
       path=st.sampled_from(["/_matrix/key/v2/server", "/.well-known/matrix/policy_server",
                             "/_matrix/federation/v1/version", SIGN, "/_matrix/x"])
       | st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=30).map(
           lambda text: "/" + quote(text, safe="/")))
def test_any_path_and_method(policy: Setup, method: str, path: str) -> None:
    """Any path with any method, unsigned: a Matrix answer (200 for the public GETs)."""
    answer = check(CASES, "any path", lambda: policy.client.request(method, path))
    if method == "GET" and path in ("/_matrix/key/v2/server",
                                    "/.well-known/matrix/policy_server"):
        assert answer.status_code == 200
