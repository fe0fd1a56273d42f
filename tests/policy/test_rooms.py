"""The rooms the policy wire serves live in the store, on either backend: several
instances on one database serve the rooms any of them joined; an earlier version's
``rooms.json`` is imported once."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from servletkit.container.cli import main
from servletkit.store import Store
from servletkit.wires.policy import rooms as rooms_module
from servletkit.wires.policy.rooms import Rooms
from tests.store.conftest import make_store, postgres_server, postgres_url  # noqa: F401

OLD_FILE = {"!old:remote.test": {"room_version": "10", "membership": "joined",
                                 "via": "remote.test", "since_ms": 5},
            "!invited:remote.test": {"room_version": "12", "membership": "invited",
                                     "via": "other.test", "since_ms": 7}}


@pytest.fixture
async def two_stores(make_store: Callable[..., Store]) -> AsyncIterator[tuple[Store, Store]]:  # noqa: F811
    """Two stores on one SQLite file or PostgreSQL database, as two instances have."""
    first, second = make_store(), make_store()
    await first.open()
    await second.open()
    yield first, second
    await first.close()
    await second.close()


async def test_rooms_are_shared_by_instances_on_one_store(
    two_stores: tuple[Store, Store], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A room one instance joins is served by the other at once (its first ask reads the
    store); a room one leaves, the other stops serving once its memory of it is stale."""
    a, b = Rooms(two_stores[0], tmp_path / "a"), Rooms(two_stores[1], tmp_path / "b")
    monkeypatch.setattr(rooms_module, "UNKNOWN_FRESH_S", 0.0)
    assert await b.get("!r:remote.test") is None
    joined = await a.add("!r:remote.test", "12", "joined", "remote.test")
    assert await b.get("!r:remote.test") == joined
    assert [room.room_id for room in await b.all()] == ["!r:remote.test"]
    await a.remove("!r:remote.test")
    assert await a.get("!r:remote.test") is None
    assert await b.get("!r:remote.test") == joined  # remembered while fresh
    later = time.monotonic() + rooms_module.FRESH_S + 1
    monkeypatch.setattr(rooms_module, "time", SimpleNamespace(time=time.time,
                                                              monotonic=lambda: later))
    assert await b.get("!r:remote.test") is None and await b.all() == []


async def test_an_old_rooms_json_is_imported_once(
    two_stores: tuple[Store, Store], tmp_path: Path
) -> None:
    """``state_dir/rooms.json`` is imported at open (a room the store already has is kept
    as stored) and renamed; the other instance serves its rooms; opening again imports
    nothing."""
    first, other = two_stores
    state = tmp_path / "policy"
    state.mkdir()
    (state / "rooms.json").write_text(json.dumps(OLD_FILE))
    kept = await Rooms(first, state).add("!old:remote.test", "11", "joined", "newer.test")
    rooms = Rooms(first, state)
    await rooms.open()
    assert not (state / "rooms.json").exists()
    assert json.loads((state / "rooms.json.imported").read_text()) == OLD_FILE
    served = {room.room_id: room for room in await Rooms(other, state).all()}
    assert served["!old:remote.test"] == kept
    invited = served["!invited:remote.test"]
    assert (invited.room_version, invited.membership, invited.via, invited.since_ms) == (
        "12", "invited", "other.test", 7)
    await rooms.open()
    assert len(await rooms.all()) == 2


async def test_an_unreadable_rooms_json_is_left_alone(
    two_stores: tuple[Store, Store], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broken ``rooms.json``: an error naming it, nothing imported, the file kept."""
    (tmp_path / "rooms.json").write_text("{not json")
    rooms = Rooms(two_stores[0], tmp_path)
    await rooms.open()
    assert await rooms.all() == [] and (tmp_path / "rooms.json").exists()
    assert "rooms.json is unreadable" in caplog.text


def test_policy_rooms_command_reads_the_store(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """``servletkit policy rooms`` lists the rooms in the store, an old file imported."""
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "rooms.json").write_text(json.dumps(OLD_FILE))
    config = tmp_path / "servletkit.toml"
    config.write_text('[policy]\nserver_name = "policy.test"\nstate_dir = "policy"\n'
                      '[store]\npath = "s.db"\n')
    assert main(["policy", "rooms", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines] == [
        ["ROOM", "VERSION", "MEMBERSHIP"], ["!old:remote.test", "10", "joined"],
        ["!invited:remote.test", "12", "invited"]]
    assert (tmp_path / "policy" / "rooms.json.imported").exists()
