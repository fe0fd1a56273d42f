"""Bounded retention of the records that refer to earlier messages.

The message-id map (``msg/``), edits (``edit/``), files served to XMPP
(``media/``) and reaction sets (``react/``, ``reaction/``) would grow for ever:
each is kept ``keep_days`` days (a key of the config), then deleted, so an edit,
reply, reaction or retraction of an older message is carried as a new message
or dropped (as one of a message that never crossed the gateway), and an older
file link answers 404.

The store keeps no write times, so the age of a key is counted from the first
sweep that saw it: a sweep (:func:`run`, in the background every
:data:`SWEEP_INTERVAL` seconds, never on a message's path) lists the keys under
:data:`PRUNED`, notes those it has not seen before under ``kept/<day>`` (days
since the epoch) and deletes the keys noted on days more than ``keep_days`` ago,
with their note. A key thus lives ``keep_days`` days after it was written, plus
at most one sweep interval and one day.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from servletkit.store.plugin import PluginStore

PRUNED = ("msg/", "edit/", "media/", "react/", "reaction/")
INDEX = "kept/"
SWEEP_INTERVAL = 3600.0  # seconds between sweeps
DAY = 86400
CHUNK = 500  # keys deleted per store commit


async def sweep(store: PluginStore, keep_days: int, now: float) -> int:
    """Note the keys first seen today and delete those seen first more than ``keep_days``
    days before ``now`` (seconds since the epoch); how many keys were deleted."""
    today = int(now // DAY)
    present = {key for prefix in PRUNED for key, _ in await store.items(prefix)}
    index: dict[str, list[str]] = dict(await store.items(INDEX))
    doomed: list[str] = []
    notes: dict[str, list[str]] = {}
    for note, keys in index.items():
        if int(note.removeprefix(INDEX)) <= today - keep_days:
            doomed += [key for key in keys if key in present]
            doomed.append(note)
            continue
        alive = [key for key in keys if key in present]
        if alive != keys:
            notes[note] = alive
    known = {key for keys in index.values() for key in keys}
    new = sorted(present - known)
    if new:
        note = f"{INDEX}{today:08d}"
        notes[note] = [*notes.get(note, index.get(note, [])), *new]
    await store.put_many(notes)
    for start in range(0, len(doomed), CHUNK):
        await store.put_many({}, delete=doomed[start:start + CHUNK])
    return sum(1 for key in doomed if not key.startswith(INDEX))


async def run(store: PluginStore, keep_days: int, log: logging.Logger) -> None:
    """Sweep now and every :data:`SWEEP_INTERVAL` seconds, until cancelled."""
    while True:
        try:
            pruned = await sweep(store, keep_days, time.time())
            if pruned:
                log.info("pruned %d records older than %d days", pruned, keep_days)
        except Exception:
            log.exception("pruning old records failed; trying again in %.0f s",
                          SWEEP_INTERVAL)
        await asyncio.sleep(SWEEP_INTERVAL)
