"""`servletkit run` when its disk is full: the homeserver gets a status it retries, the
container stays up, and the retry once the disk has room is counted exactly once."""

from __future__ import annotations

import resource
from pathlib import Path

import httpx

from servletkit.store import PluginStore, SqliteStore
from servletkit.testing import plugin_site, python_path_env
from tests.appservice.support import new_event
from tests.container.test_run_hardening import HS_TOKEN, run, stop

COUNTS = '''
from servletkit import hookimpl

@hookimpl
async def on_stored_event(event, context):
    key = f"seen/{event.event_id}"
    await context.store.put(key, await context.store.get(key, 0) + 1)
'''


async def test_a_full_disk_is_a_5xx_then_the_retry_counts_once(tmp_path: Path) -> None:
    """With every file write refused (RLIMIT_FSIZE 0: EFBIG, as a full disk refuses), a
    transaction is answered 500 M_UNKNOWN and health still answers; once writes work again
    the homeserver's retry is delivered, and each event is stored exactly once."""
    env = python_path_env(plugin_site(tmp_path, "counts", COUNTS))
    process, url = run(tmp_path, plugins={"counts": {}}, env=env)
    # a connection per request: uvicorn closes one whose request raised
    auth = {"Authorization": f"Bearer {HS_TOKEN}", "Connection": "close"}
    events = [new_event() for _ in range(3)]
    try:
        async with httpx.AsyncClient(base_url=url, headers=auth, timeout=20) as client:
            assert (await client.put("/_matrix/app/v1/transactions/warm",
                                     json={"events": [new_event()]})).status_code == 200
            soft, hard = resource.prlimit(process.pid, resource.RLIMIT_FSIZE)
            resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (0, hard))
            try:
                full = await client.put("/_matrix/app/v1/transactions/t1", json={"events": events})
                health = await client.get("/_servletkit/health")
            finally:
                resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (soft, hard))
            retried = await client.put("/_matrix/app/v1/transactions/t1", json={"events": events})
            again = await client.put("/_matrix/app/v1/transactions/t1", json={"events": events})
    finally:
        stop(process, tmp_path)
    assert (full.status_code, full.json()["errcode"]) == (500, "M_UNKNOWN")
    assert health.status_code == 200
    assert (retried.status_code, again.status_code) == (200, 200)
    store = SqliteStore(tmp_path / "servletkit.db")
    try:
        counts = PluginStore(store, "counts")
        assert [await counts.get(f"seen/{event['event_id']}") for event in events] == [1, 1, 1]
    finally:
        await store.close()
