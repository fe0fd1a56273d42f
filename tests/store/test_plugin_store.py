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


def _increment(value):
    count = (value or 0) + 1
    return count, count


class TestUpdate:
    async def test_read_change_write_and_delete(self, store):
        """update stores what change makes of the value and returns its result; a new
        value of None deletes the key."""
        plugin = PluginStore(store, "p")
        assert await plugin.update("n", _increment) == 1
        assert await plugin.update("n", lambda n: ([n, "x"], "kept")) == "kept"
        assert await plugin.get("n") == [1, "x"]
        assert await plugin.update("n", lambda n: (None, n)) == [1, "x"]
        assert await plugin.items() == []
        with pytest.raises(TypeError, match="got int"):
            await plugin.update(1, _increment)

    async def test_a_failing_change_writes_nothing(self, store):
        """An exception in change leaves the value as it was, and the store usable."""
        plugin = PluginStore(store, "p")
        await plugin.put("n", 5)

        def broken(value):
            raise RuntimeError("no")

        with pytest.raises(RuntimeError, match="no"):
            await plugin.update("n", broken)
        assert await plugin.update("n", _increment) == 6

    async def test_it_commits_at_once_inside_a_unit(self, store):
        """Inside a unit of work an update is committed at once; one of a key with a put
        pending in the unit is refused, saying why."""
        plugin = PluginStore(store, "p")
        with unit_of_work(Batch()):
            assert await plugin.update("n", _increment) == 1
            assert await store.get("p", "n") == "1"
            await plugin.put("m", 1)
            with pytest.raises(ValueError, match="'m' has a put pending"):
                await plugin.update("m", _increment)

    async def test_two_instances_counting_at_once_stay_exact(self, make_store):
        """Concurrent updates from two instances on one store lose no increment and never
        hand out one count twice."""
        stores = [make_store(), make_store()]
        for store in stores:
            await store.open()
        try:
            plugins = [PluginStore(store, "p") for store in stores]
            counts = await asyncio.gather(*(plugins[i % 2].update("n", _increment)
                                            for i in range(60)))
            assert sorted(counts) == list(range(1, 61))
            assert await plugins[0].get("n") == 60
        finally:
            for store in stores:
                await store.close()
