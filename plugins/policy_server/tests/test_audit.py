"""The audit log (in the plugin's store) and the token-protected admin route."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from servletkit_policy_server import PolicyServer
from servletkit_policy_server.audit import FLUSH_RECORDS, TRIM_EVERY

from servletkit.store import PluginStore, SqliteStore
from servletkit.testing import make_event, plugin_client, running_container

TOKEN = "admin-token-0123456789"


async def test_every_decision_and_would_be_decision_is_audited_and_kept(
        tmp_path: Path) -> None:
    """A dry-run rule's would-be refusal and the refusal after it are both kept, with the
    rule, wire and event; a new container on the same store still has them."""
    table = {"dry_run_rules": ["blocked_words"], "blocked_words": ["spam"], "max_mentions": 1}
    config = {"plugins": {"policy_server": table}, "store": {"path": str(tmp_path / "s.db")}}
    event = make_event("spam @a:x @b:x", wire="appservice")
    async with running_container({"policy_server": PolicyServer()}, config) as c:
        assert (await c.dispatcher.intercept("on_send_event", event)).vetoed
        assert not (await c.dispatcher.intercept("on_send_event", make_event("fine"))).vetoed
    plugin = PolicyServer()
    async with running_container({"policy_server": plugin}, config) as c:
        records = await plugin.audit.newest(PluginStore(c.store, "policy_server"), 10)
    assert [(r["rule"], r["outcome"], r["wire"], r["event_id"], r["room_id"])
            for r in records] == [
        ("blocked_words", "would refuse", "appservice", event.event_id, event.room_id),
        ("max_mentions", "refused", "appservice", event.event_id, event.room_id)]
    assert records[1]["detail"] == "the message mentions 2 users (at most 1)"
    assert records[0]["subject"] == (f"m.room.message {event.event_id} of @alice:localhost "
                                     f"in {event.room_id}")


async def test_the_audit_log_is_bounded() -> None:
    """audit_kept bounds the log (trimmed every TRIM_EVERY records written); the newest
    stay."""
    plugin = PolicyServer()
    table = {"blocked_words": ["spam"], "audit_kept": 3}
    async with running_container({"policy_server": plugin},
                                 {"plugins": {"policy_server": table}}) as c:
        events = [make_event("spam") for _ in range(TRIM_EVERY + 2)]
        for event in events:
            await c.dispatcher.intercept("on_send_event", event)
        store = PluginStore(c.store, "policy_server")
        await plugin.audit.flush(store)
        assert 3 <= len(await store.items("audit/")) < 3 + TRIM_EVERY
        assert [r["event_id"] for r in await plugin.audit.newest(store, 100)] == [
            e.event_id for e in events[-3:]]


async def test_records_are_written_behind_the_decisions_and_survive_a_clean_stop(
        tmp_path: Path) -> None:
    """A refusal does not wait for its record's commit (it is readable at once from the
    buffer); every record of a burst is in the store file after the container stops."""
    path = tmp_path / "s.db"
    config = {"plugins": {"policy_server": {"blocked_words": ["spam"]}},
              "store": {"path": str(path)}}
    plugin = PolicyServer()
    events = [make_event("spam") for _ in range(FLUSH_RECORDS * 2 + 7)]
    async with running_container({"policy_server": plugin}, config) as c:
        store = PluginStore(c.store, "policy_server")
        assert (await c.dispatcher.intercept("on_send_event", events[0])).vetoed
        assert await store.items("audit/") == []
        assert [r["event_id"] for r in await plugin.audit.newest(store, 1)] == [
            events[0].event_id]
        for event in events[1:]:
            assert (await c.dispatcher.intercept("on_send_event", event)).vetoed
    after = SqliteStore(path)
    try:
        records = [json.loads(text) for _, text in await after.items("policy_server", "audit/")]
    finally:
        await after.close()
    assert [r["event_id"] for r in records] == [e.event_id for e in events]


async def test_admin_route_audit_rules_and_dry_run_toggle() -> None:
    """Served by the container under /_servletkit/plugins/policy_server/: token required;
    GET rules and audit; PUT dry_run turns refusals into would-be ones."""
    table = {"blocked_words": ["spam"], "admin_token": TOKEN}
    async with running_container({"policy_server": PolicyServer()},
                                 {"plugins": {"policy_server": table}}) as c, \
            plugin_client(c, "policy_server") as http:
        auth = {"Authorization": f"Bearer {TOKEN}"}

        async def answer(method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
            response = await http.request(method, path, **kwargs)
            return response.status_code, response.json()

        assert await answer("GET", "/rules") == (401, {
            "errcode": "M_MISSING_TOKEN",
            "error": "send admin_token as 'Authorization: Bearer TOKEN'"})
        status, body = await answer("GET", "/audit", headers={"Authorization": "Bearer x"})
        assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
        assert await answer("GET", "/rules", headers=auth) == (200, {
            "rules": [{"name": "blocked_words", "dry_run": False},
                      {"name": "policy_list", "dry_run": False}],
            "dry_run": False, "policy_lists": {}, "bans": 0, "communities": []})
        assert (await c.dispatcher.intercept("on_send_event", make_event("spam"))).vetoed
        assert await answer("PUT", "/dry_run", headers=auth, json={"dry_run": True}) == (
            200, {"dry_run": True})
        assert not (await c.dispatcher.intercept("on_send_event", make_event("spam"))).vetoed
        status, body = await answer("GET", "/audit", params={"limit": 5}, headers=auth)
        assert [(d["rule"], d["outcome"]) for d in body["decisions"]] == [
            ("blocked_words", "refused"), ("blocked_words", "would refuse")]
        status, body = await answer("GET", "/audit", params={"limit": "x"}, headers=auth)
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
        status, body = await answer("PUT", "/dry_run", headers=auth, content=b"{")
        assert (status, body["errcode"]) == (400, "M_BAD_JSON")
        status, body = await answer("PUT", "/dry_run", headers=auth, json={"dry_run": "on"})
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
        assert (await answer("GET", "/dry_run", headers=auth))[0] == 405
    async with plugin_client(c, "policy_server") as after:  # the routes stop with the plugin
        assert (await after.get("/rules", headers=auth)).status_code == 404


async def test_admin_route_rules_show_each_community() -> None:
    """GET rules lists every community once, in config order: its rooms, the keys it sets
    and its rules (the global ones it inherits included)."""
    table = {"blocked_words": ["spam"], "admin_token": TOKEN, "communities": [
        {"rooms": ["!a:localhost", "!b:localhost"], "flood_messages": 3, "flood_seconds": 5,
         "dry_run_rules": ["flood"]},
        {"rooms": ["!c:localhost"], "blocked_words": []}]}
    async with running_container({"policy_server": PolicyServer()},
                                 {"plugins": {"policy_server": table}}) as c, \
            plugin_client(c, "policy_server") as http:
        answer = await http.get("/rules", headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 200
        assert answer.json()["communities"] == [
            {"rooms": ["!a:localhost", "!b:localhost"], "dry_run": False,
             "settings": {"flood_messages": 3, "flood_seconds": 5, "dry_run_rules": ["flood"]},
             "rules": [{"name": "blocked_words", "dry_run": False},
                       {"name": "flood", "dry_run": True},
                       {"name": "policy_list", "dry_run": False}]},
            {"rooms": ["!c:localhost"], "dry_run": False, "settings": {"blocked_words": []},
             "rules": [{"name": "policy_list", "dry_run": False}]}]


async def test_no_admin_token_no_admin_route() -> None:
    """Without admin_token the plugin serves no routes at all."""
    async with running_container({"policy_server": PolicyServer()},
                                 {"plugins": {"policy_server": {}}}) as c, \
            plugin_client(c, "policy_server") as http:
        answer = await http.get("/rules", headers={"Authorization": f"Bearer {TOKEN}"})
        assert (answer.status_code, answer.json()["errcode"]) == (404, "M_UNRECOGNIZED")
        assert c.http.plugins == []
