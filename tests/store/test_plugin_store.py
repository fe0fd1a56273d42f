"""context.store: a plugin's own data, awaited, in and outside a unit of work."""

from __future__ import annotations

import asyncio

import pytest

from servletkit.store import Batch, PluginStore, current_batch, unit_of_work


class TestOutsideAUnit:
    async def test_put_get_delete_items_are_scoped(self, store):
        """Each plugin sees only its own keys; values round-trip through JSON."""
        a, b = PluginStore(store, "a"), PluginStore(store, "b")
        await a.put("room/1", {"mxid": "@x:y", "n": [1, 2]})
        await a.put("room/2", "two")
        await a.put("other", 3)
        await b.put("room/1", "b's")
        assert await a.get("room/1") == {"mxid": "@x:y", "n": [1, 2]}
        assert await a.items("room/") == [("room/1", {"mxid": "@x:y", "n": [1, 2]}),
                                          ("room/2", "two")]
        await a.delete("room/2")
        await a.delete("never-there")
        assert await a.get("room/2", "gone") == "gone"
        assert await b.items() == [("room/1", "b's")]

    async def test_a_write_is_committed_when_its_await_returns(self, store):
        """Without a unit of work each write is durable at once."""
        await PluginStore(store, "p").put("k", [1])
        assert await store.get("p", "k") == "[1]"
        await PluginStore(store, "p").delete("k")
        assert await store.get("p", "k") is None

    async def test_non_string_keys_are_refused(self, store):
        """Keys must be strings (the error says what was given)."""
        with pytest.raises(TypeError, match="got int"):
            await PluginStore(store, "p").put(1, "x")


class TestInAUnit:
    async def test_writes_wait_for_the_commit(self, store):
        """Inside a unit of work writes are visible to the writer only, until committed."""
        plugin = PluginStore(store, "p")
        await plugin.put("k", 1)
        batch = Batch()
        with unit_of_work(batch):
            await plugin.put("k", 2)
            await plugin.put("new", "x")
            await plugin.delete("k")
            assert await plugin.get("k") is None
            assert await plugin.items() == [("new", "x")]
            assert await store.get("p", "k") == "1"
        await store.commit(batch)
        assert await plugin.get("k") is None
        assert await plugin.get("new") == "x"

    async def test_items_merge_pending_writes_with_committed_data(self, store):
        """items() shows committed keys overlaid with the unit's writes and deletions."""
        plugin = PluginStore(store, "p")
        for key in ("a/1", "a/2", "a/3", "b/1"):
            await plugin.put(key, key)
        with unit_of_work(Batch()):
            await plugin.put("a/2", "changed")
            await plugin.delete("a/3")
            await plugin.put("a/4", "added")
            await PluginStore(store, "other").put("a/5", "not p's")
            assert await plugin.items("a/") == [("a/1", "a/1"), ("a/2", "changed"),
                                                ("a/4", "added")]

    async def test_the_unit_follows_tasks_started_in_it(self, store):
        """A task a hook starts inside the unit writes into the same unit (a context variable)."""
        plugin = PluginStore(store, "p")
        batch = Batch()
        with unit_of_work(batch):
            await asyncio.create_task(plugin.put("from-task", True))
        assert batch.writes == {("p", "from-task"): "true"}
        assert await store.get("p", "from-task") is None

    async def test_writes_after_the_unit_closed_commit_at_once(self, store):
        """A task that outlives its unit (the batch is committed) writes straight through."""
        plugin = PluginStore(store, "p")
        batch = Batch()
        with unit_of_work(batch):
            await store.commit(batch)
            assert current_batch() is None
            await plugin.put("late", True)
        assert await store.get("p", "late") == "true"


class TestPutMany:
    async def test_many_writes_and_deletes_in_one_commit(self, store):
        """put_many stores and forgets many keys at once, scoped to the plugin."""
        plugin = PluginStore(store, "p")
        await plugin.put("old", 1)
        await plugin.put_many({"a": [1], "b": {"x": None}}, delete=["old", "never-there"])
        assert await plugin.items() == [("a", [1]), ("b", {"x": None})]
        assert await PluginStore(store, "q").items() == []
        with pytest.raises(TypeError, match="got int"):
            await plugin.put_many({1: "x"})

    async def test_inside_a_unit_they_wait_for_its_commit(self, store):
        """In a unit of work put_many joins the unit's writes."""
        plugin = PluginStore(store, "p")
        batch = Batch()
        with unit_of_work(batch):
            await plugin.put_many({"a": 1})
            assert await plugin.get("a") == 1
        assert await store.get("p", "a") is None
        await store.commit(batch)
        assert await plugin.get("a") == 1
