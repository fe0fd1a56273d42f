"""The appservice wire hands events to plugins exactly once, in order, and acts on decisions."""

from __future__ import annotations

import asyncio
import random

from servletkit import Allow, Modify, Veto, hookimpl
from servletkit.wires.appservice.homeserver import MatrixRequestError
from tests.appservice.support import AUTH, new_event


def put(client, txn_id, body):
    return client.put(f"/_matrix/app/v1/transactions/{txn_id}", json=body, headers=AUTH)


class Recorder:
    """Observes stored events and ephemeral data; stores each event id in context.store."""

    def __init__(self, delay: bool = False) -> None:
        self.seen: list[tuple[str, str]] = []
        self.ephemeral: list[tuple[str, object]] = []
        self.delay = delay

    @hookimpl
    async def on_stored_event(self, event, context):
        if self.delay:
            await asyncio.sleep(random.random() / 200)
        self.seen.append((event.room_id, event.event_id))
        await context.store.put(f"seen/{event.event_id}", event.content.get("body"))

    @hookimpl
    def on_ephemeral(self, data):
        self.ephemeral.append((data.type, data.raw.get("n")))


class FakeHomeserver:
    """Stands in for the homeserver client: records redactions, or fails them."""

    def __init__(self, fail: bool = False) -> None:
        self.redacted: list[tuple[str, str, str | None]] = []
        self.fail = fail

    async def redact(self, room_id, event_id, reason=None, *, txn_id=None):
        if self.fail:
            raise MatrixRequestError("PUT", "/redact", 403, "M_FORBIDDEN", "no power")
        self.redacted.append((room_id, event_id, reason))
        return "$redaction"

    async def aclose(self):
        pass


class TestExactlyOnce:
    async def test_a_retry_is_not_delivered_again(self, make_wire):
        """The same id with the same events is answered 200 and not delivered again, even
        when its ephemeral data differs (homeservers drop it from retries)."""
        recorder = Recorder()
        _, client = await make_wire({"rec": recorder})
        first = new_event()
        typing = {"type": "m.typing", "room_id": "!room:localhost", "content": {}, "n": 1}
        body = {"events": [first], "ephemeral": [typing]}
        assert (await put(client, "5", body)).status_code == 200
        response = await put(client, "5", {"events": [first]})
        assert (response.status_code, response.json()) == (200, {})
        assert recorder.seen == [("!room:localhost", first["event_id"])]
        assert recorder.ephemeral == [("m.typing", 1)]

    async def test_a_reused_id_with_other_events_is_a_new_transaction(self, make_wire, caplog):
        """After the homeserver's counter went back (a Synapse restart), the same ids carry new
        events: they are delivered, with one warning for the run of reused ids."""
        recorder = Recorder()
        _, client = await make_wire({"rec": recorder})
        before = [new_event() for _ in range(3)]
        for n, event in enumerate(before, start=1):
            assert (await put(client, str(n), {"events": [event]})).status_code == 200
        after = [new_event() for _ in range(3)]
        for n, event in enumerate(after, start=1):  # the counter starts from 1 again
            assert (await put(client, str(n), {"events": [event]})).status_code == 200
        assert [event_id for _, event_id in recorder.seen] == [
            e["event_id"] for e in before + after]
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1
        assert "transaction counter went back" in warnings[0]

    async def test_a_retry_after_a_reset_is_not_delivered_again(self, make_wire):
        """A retry of a transaction whose id was reused is a retry of the new one."""
        recorder = Recorder()
        _, client = await make_wire({"rec": recorder})
        old, new = new_event(), new_event()
        await put(client, "1", {"events": [old]})
        await put(client, "1", {"events": [new]})
        await put(client, "1", {"events": [new]})
        await put(client, "1", {"events": [old]})  # an id reused twice over is new again
        assert [event_id for _, event_id in recorder.seen] == [
            old["event_id"], new["event_id"], old["event_id"]]

    async def test_ephemeral_only_transactions_with_a_reused_id_are_delivered(self, make_wire):
        """Without events, a transaction is told apart by its ephemeral data."""
        recorder = Recorder()
        _, client = await make_wire({"rec": recorder})
        for n in (1, 2, 2):
            typing = {"type": "m.typing", "room_id": "!r:localhost", "content": {}, "n": n}
            await put(client, "1", {"events": [], "ephemeral": [typing]})
        assert recorder.ephemeral == [("m.typing", 1), ("m.typing", 2)]

    async def test_a_retry_racing_the_first_attempt_is_not_delivered_twice(self, make_wire):
        """The same id sent while the first attempt still runs waits for it, then is a no-op."""
        recorder = Recorder(delay=True)
        _, client = await make_wire({"rec": recorder})
        events = [new_event() for _ in range(5)]
        first, retry = await asyncio.gather(put(client, "9", {"events": events}),
                                            put(client, "9", {"events": events}))
        assert (first.status_code, retry.status_code) == (200, 200)
        assert [event_id for _, event_id in recorder.seen] == [e["event_id"] for e in events]

    async def test_a_retry_does_not_wait_behind_a_transaction_in_progress(self, make_wire):
        """A retry of a handled transaction is answered while another one is still being
        handled (the store is read before the queue only when there is a queue)."""

        class Held:
            def __init__(self) -> None:
                self.release = asyncio.Event()
                self.held = asyncio.Event()
                self.seen: list[str] = []
                self.holding = False

            @hookimpl
            async def on_stored_event(self, event):
                self.seen.append(event.event_id)
                if event.content.get("body") == "hold":
                    self.holding = True
                    self.held.set()
                    try:  # until released, or cancelled at its budget (1 s)
                        await self.release.wait()
                    finally:
                        self.holding = False

        plugin = Held()
        _, client = await make_wire({"held": plugin})
        done = new_event()
        assert (await put(client, "1", {"events": [done]})).status_code == 200
        held = asyncio.ensure_future(put(client, "2", {"events": [new_event(body="hold")]}))
        await asyncio.wait_for(plugin.held.wait(), 10)
        retry = await asyncio.wait_for(put(client, "1", {"events": [done]}), 5)
        assert retry.status_code == 200 and plugin.holding
        plugin.release.set()
        assert (await held).status_code == 200
        assert len(plugin.seen) == 2

    async def test_dedupe_survives_a_restart(self, make_wire):
        """A new container on the same store still knows the committed ids and plugin data."""
        recorder = Recorder()
        container, client = await make_wire({"rec": recorder})
        ev = new_event(body="kept")
        assert (await put(client, "7", {"events": [ev]})).status_code == 200
        await container.stop()
        again = Recorder()
        container2, client2 = await make_wire({"rec": again})
        assert (await put(client2, "7", {"events": [ev]})).status_code == 200
        assert again.seen == []
        stored = container2.make_context("rec", {}).store
        assert await stored.get(f"seen/{ev['event_id']}") == "kept"

    async def test_plugin_writes_commit_with_the_transaction(self, make_wire):
        """Writes made while a transaction is handled are readable inside it, durable after."""
        reads = []

        class Writer:
            @hookimpl
            async def on_stored_event(self, event, context):
                await context.store.put("count", await context.store.get("count", 0) + 1)
                reads.append(await container.store.get("writer", "count"))

        container, client = await make_wire({"writer": Writer()})
        await put(client, "1", {"events": [new_event(), new_event()]})
        # inside the transaction the committed value was unchanged; after it, both writes count
        assert reads == [None, None]
        assert await container.store.get("writer", "count") == "2"

    async def test_concurrent_transactions_keep_room_order(self, make_wire):
        """Transactions sent concurrently are handled one by one: each room's order is kept."""
        recorder = Recorder(delay=True)
        _, client = await make_wire({"rec": recorder})
        sent: dict[str, list[str]] = {"!a:localhost": [], "!b:localhost": []}
        bodies = []
        for _ in range(12):
            events = []
            for _ in range(3):
                room = random.choice(list(sent))
                ev = new_event(room)
                sent[room].append(ev["event_id"])
                events.append(ev)
            bodies.append({"events": events})
        responses = await asyncio.gather(*(put(client, f"c{i}", body)
                                           for i, body in enumerate(bodies)))
        assert all(r.status_code == 200 for r in responses)
        for room, ids in sent.items():
            assert [e for r, e in recorder.seen if r == room] == ids

    async def test_plugin_failure_does_not_fail_the_transaction(self, make_wire):
        """A plugin that raises is logged; the transaction is still acknowledged and recorded."""

        class Broken:
            @hookimpl
            def on_stored_event(self, event):
                raise RuntimeError("boom")

        container, client = await make_wire({"broken": Broken()})
        assert (await put(client, "1", {"events": [new_event()]})).status_code == 200
        assert await container.store.processed_digest("1") is not None


class TestDecisions:
    @staticmethod
    def plugin(answer):
        class Decider:
            @hookimpl
            def on_send_event(self, event):
                return answer

        return Decider()

    async def test_veto_observed_by_default(self, make_wire):
        """With enforce_vetoes = "observe" a Veto is audited and nothing is redacted."""
        container, client = await make_wire({"judge": self.plugin(Veto("no spam"))})
        container.homeserver = FakeHomeserver()
        ev = new_event()
        await put(client, "1", {"events": [ev]})
        assert container.homeserver.redacted == []
        [record] = await container.store.audit_log()
        assert (record.plugin, record.hook, record.decision, record.event_id, record.detail) == (
            "judge", "on_send_event", "veto", ev["event_id"], "no spam")

    async def test_veto_redacted_in_redact_mode(self, make_wire):
        """With enforce_vetoes = "redact" the vetoed event is redacted with the reason."""
        container, client = await make_wire({"judge": self.plugin(Veto("no spam"))},
                                            enforce_vetoes="redact")
        container.homeserver = FakeHomeserver()
        ev = new_event()
        await put(client, "1", {"events": [ev]})
        assert container.homeserver.redacted == [("!room:localhost", ev["event_id"], "no spam")]
        assert [r.decision for r in await container.store.audit_log()] == ["veto", "redacted"]

    async def test_failed_redaction_is_audited_and_acknowledged(self, make_wire):
        """A redaction the homeserver refuses is audited; the transaction still succeeds."""
        container, client = await make_wire({"judge": self.plugin(Veto("no spam"))},
                                            enforce_vetoes="redact")
        container.homeserver = FakeHomeserver(fail=True)
        assert (await put(client, "1", {"events": [new_event()]})).status_code == 200
        records = await container.store.audit_log()
        assert [r.decision for r in records] == ["veto", "redact_failed"]
        assert "M_FORBIDDEN" in records[1].detail

    async def test_modify_is_recorded_not_applied(self, make_wire):
        """Modify cannot change a stored event: audited as not applied; observers see the original;
        later plugins in the chain see the modified content."""
        later_saw = []

        class Later:
            @hookimpl
            def on_send_event(self, event):
                later_saw.append(event.content["body"])

        recorder = Recorder()
        container, client = await make_wire(
            {"editor": self.plugin(Modify({"body": "edited"})), "later": Later(),
             "rec": recorder})
        ev = new_event(body="original")
        await put(client, "1", {"events": [ev]})
        assert later_saw == ["edited"]
        stored = container.make_context("rec", {}).store
        assert await stored.get(f"seen/{ev['event_id']}") == "original"
        [record] = await container.store.audit_log()
        assert (record.plugin, record.decision) == ("editor", "modify")
        assert "not applied" in record.detail

    async def test_allow_is_audited(self, make_wire):
        """An Allow is an audited decision too."""
        container, client = await make_wire({"judge": self.plugin(Allow())})
        await put(client, "1", {"events": [new_event()]})
        assert [r.decision for r in await container.store.audit_log()] == ["allow"]

    async def test_events_arrive_after_store(self, make_wire):
        """Interception hooks on this wire see event.stage == "after_store"."""
        stages = []

        class Stage:
            @hookimpl
            def on_send_event(self, event):
                stages.append(event.stage)

        _, client = await make_wire({"stage": Stage()})
        await put(client, "1", {"events": [new_event()]})
        assert stages == ["after_store"]


class TestEphemeral:
    async def test_stable_keys_win_over_unstable(self, make_wire):
        """ephemeral/to_device are used when present; the MSC2409 names only otherwise."""
        recorder = Recorder()
        _, client = await make_wire({"rec": recorder})
        typing = {"type": "m.typing", "room_id": "!r:localhost", "content": {"user_ids": []}}
        to_device = {"type": "m.room.encrypted", "sender": "@a:localhost", "content": {},
                     "to_user_id": "@_x_bot:localhost", "to_device_id": "D"}
        await put(client, "1", {"events": [], "ephemeral": [{**typing, "n": 1}],
                                "de.sorunome.msc2409.ephemeral": [{**typing, "n": 1}],
                                "de.sorunome.msc2409.to_device": [{**to_device, "n": 2}]})
        await put(client, "2", {"events": [],
                                "de.sorunome.msc2409.ephemeral": [{**typing, "n": 3}]})
        assert recorder.ephemeral == [("m.typing", 1), ("m.room.encrypted", 2), ("m.typing", 3)]

    async def test_presence_online_reaches_connect_hook_once(self, make_wire):
        """A user's presence going online is reported to on_connect_event_stream, once."""
        connects = []

        class Watcher:
            @hookimpl
            def on_connect_event_stream(self, user_id, device_id):
                connects.append((user_id, device_id))
                return Allow()

        container, client = await make_wire({"watch": Watcher()})

        def presence(state):
            return {"type": "m.presence", "sender": "@a:localhost", "content": {"presence": state}}

        await put(client, "1", {"events": [], "ephemeral": [presence("online")]})
        await put(client, "2", {"events": [], "ephemeral": [presence("online")]})
        await put(client, "3", {"events": [], "ephemeral": [presence("offline"),
                                                              presence("online")]})
        assert connects == [("@a:localhost", None)] * 2
        records = await container.store.audit_log()
        assert [r.hook for r in records] == ["on_connect_event_stream"] * 2

    async def test_presence_state_is_bounded(self, make_wire):
        """At most presence_kept users are remembered as online: a new one evicts the one
        seen longest ago, whose next "online" is reported again."""
        connects = []

        class Watcher:
            @hookimpl
            def on_connect_event_stream(self, user_id, device_id):
                connects.append(user_id)

        _, client = await make_wire({"watch": Watcher()}, presence_kept=3)

        def online(*names):
            return [{"type": "m.presence", "sender": f"@{name}:localhost",
                     "content": {"presence": "online"}} for name in names]

        await put(client, "1", {"events": [], "ephemeral": online("a", "b", "c", "a", "d")})
        assert connects == ["@a:localhost", "@b:localhost", "@c:localhost", "@d:localhost"]
        await put(client, "2", {"events": [], "ephemeral": online("a", "d", "c", "b")})
        # "a" was seen again before "d" came, so "b" was evicted, not "a"
        assert connects[4:] == ["@b:localhost"]
        await put(client, "3", {"events": [], "ephemeral": online(*(f"u{i}" for i in range(100)))})
        assert len(connects) == 105


class TestQueries:
    async def test_first_true_wins(self, make_wire):
        """Plugins are asked in order; the first True answers 200 and the rest are not asked."""
        asked = []

        def answering(name, answer):
            class Answer:
                @hookimpl
                async def on_query_user(self, user_id, context):
                    asked.append(name)
                    return answer

            return Answer()

        container, client = await make_wire({"a": answering("a", None),
                                             "b": answering("b", False),
                                             "c": answering("c", True),
                                             "d": answering("d", True)})
        response = await client.get("/_matrix/app/v1/users/@_x_romeo:localhost", headers=AUTH)
        assert (response.status_code, response.json()) == (200, {})
        assert asked == ["a", "b", "c"]
        [record] = await container.store.audit_log()
        assert (record.plugin, record.hook, record.detail) == (
            "c", "on_query_user", "@_x_romeo:localhost")

    async def test_nobody_knows_is_404(self, make_wire):
        """No True answer (or a failing plugin) is 404 M_NOT_FOUND."""

        class Broken:
            @hookimpl
            def on_query_alias(self, alias):
                raise RuntimeError("down")

        _, client = await make_wire({"broken": Broken()})
        response = await client.get("/_matrix/app/v1/rooms/%23_x_lobby:localhost", headers=AUTH)
        assert (response.status_code, response.json()["errcode"]) == (404, "M_NOT_FOUND")

    async def test_alias_is_percent_decoded(self, make_wire):
        """The alias reaches the hook decoded, as the homeserver meant it."""
        asked = []

        class Rooms:
            @hookimpl
            def on_query_alias(self, alias):
                asked.append(alias)
                return True

        _, client = await make_wire({"rooms": Rooms()})
        response = await client.get("/_matrix/app/v1/rooms/%23_x_lobby%3Alocalhost",
                                    headers=AUTH)
        assert response.status_code == 200
        assert asked == ["#_x_lobby:localhost"]

    async def test_thirdparty(self, make_wire):
        """Third-party lookups ask the hooks; unknown → 404; a missing parameter → 400."""
        PROTOCOL = {"user_fields": ["nick"], "location_fields": [], "icon": "mxc://x/y",
                    "field_types": {}, "instances": []}
        calls = []

        class Bridge:
            @hookimpl
            def on_thirdparty_protocol(self, protocol):
                return PROTOCOL if protocol == "irc" else None

            @hookimpl
            def on_thirdparty_lookup(self, kind, protocol, fields):
                calls.append((kind, protocol, dict(fields)))
                return [{"userid": "@_x_a:localhost", "protocol": "irc", "fields": fields}]

        _, client = await make_wire({"bridge": Bridge()})
        base = "/_matrix/app/v1/thirdparty"
        assert (await client.get(f"{base}/protocol/irc", headers=AUTH)).json() == PROTOCOL
        assert (await client.get(f"{base}/protocol/xmpp", headers=AUTH)).status_code == 404
        assert (await client.get(f"{base}/user/irc?nick=a", headers=AUTH)).status_code == 200
        assert (await client.get(f"{base}/location/irc", headers=AUTH)).status_code == 200
        assert (await client.get(f"{base}/user?userid=@_x_a:localhost",
                                 headers=AUTH)).status_code == 200
        assert (await client.get(f"{base}/location?alias=%23x:localhost",
                                 headers=AUTH)).status_code == 200
        response = await client.get(f"{base}/location", headers=AUTH)
        assert (response.status_code, response.json()["errcode"]) == (400, "M_MISSING_PARAM")
        assert calls == [("user", "irc", {"nick": "a"}), ("location", "irc", {}),
                         ("user", None, {"userid": "@_x_a:localhost"}),
                         ("location", None, {"alias": "#x:localhost"})]
