"""Key pruning: the records that refer to earlier messages are kept ``keep_days`` days."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from servletkit_xmpp_gateway import retention
from servletkit_xmpp_gateway.config import GatewayConfig, GatewayConfigError

from servletkit.store import PluginStore
from servletkit.store.sqlite import SqliteStore

DAY = retention.DAY
START = 20_000 * DAY + 3600.0  # a fixed clock: day 20000, 01:00


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[PluginStore]:
    backing = SqliteStore(tmp_path / "gateway.db")
    await backing.open()
    try:
        yield PluginStore(backing, "xmpp_gateway")
    finally:
        await backing.close()


OLD = {"msg/m/$old": {"scope": "a@muc", "id": "x1"}, "msg/x/a@muc/x1": "$old",
       "edit/$oldedit": "$old", "media/tok1": {"mxc": "mxc://hs/1"},
       "react/x1/@u:hs": ["👍"], "reaction/$r1": {"target": "x1"}}
NEW = {"msg/m/$new": {"scope": "a@muc", "id": "x2"}, "msg/x/a@muc/x2": "$new",
       "media/tok2": {"mxc": "mxc://hs/2"}}
KEPT = {"room/a@muc": "!r:hs", "member/!r:hs/@u:hs": "U", "out/000000000001": {"op": "msg"}}


async def test_old_records_go_and_recent_ones_and_the_mapping_stay(store):
    """Records first seen more than keep_days ago are deleted; newer ones and the room
    mapping, members and queues (not pruned) stay."""
    await store.put_many(OLD | KEPT)
    assert await retention.sweep(store, 30, START) == 0
    await store.put_many(NEW)
    assert await retention.sweep(store, 30, START + 25 * DAY) == 0
    assert await retention.sweep(store, 30, START + 29 * DAY) == 0  # not yet 30 days
    assert await retention.sweep(store, 30, START + 30 * DAY) == len(OLD)
    left = dict(await store.items())
    assert not set(OLD) & set(left)
    assert set(NEW) | set(KEPT) <= set(left)
    assert await retention.sweep(store, 30, START + 55 * DAY) == len(NEW)
    assert set(dict(await store.items())) == set(KEPT)  # the notes are gone too


async def test_a_key_deleted_meanwhile_leaves_its_note(store):
    """A record another part of the gateway deleted (a redacted reaction) drops out of
    its note, so notes hold only live keys."""
    await store.put_many(OLD)
    await retention.sweep(store, 30, START)
    await store.delete("reaction/$r1")
    await retention.sweep(store, 30, START + DAY)
    notes = await store.items(retention.INDEX)
    assert notes == [(f"{retention.INDEX}{int(START // DAY):08d}",
                      sorted(set(OLD) - {"reaction/$r1"}))]


def test_keep_days_is_a_config_key():
    """keep_days defaults to 30; 0 keeps every record; a negative number is refused."""
    base = {"component_jid": "c", "component_secret": "s", "muc_domain": "m"}
    assert GatewayConfig.from_table(base).keep_days == 30
    assert GatewayConfig.from_table(base | {"keep_days": 0}).keep_days == 0
    with pytest.raises(GatewayConfigError, match="keep_days"):
        GatewayConfig.from_table(base | {"keep_days": -1})
