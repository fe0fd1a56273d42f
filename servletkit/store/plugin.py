"""What a plugin gets as ``context.store``: its own durable key/value data."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from servletkit.store.interface import Store
from servletkit.store.singleton import run_singleton
from servletkit.store.units import Batch, current_batch

T = TypeVar("T")


class PluginStore:
    """One plugin's durable key/value data, as ``context.store``.

    Keys are strings; values anything JSON can hold. Every method is awaited
    (``await context.store.get(key)``), whichever store backs it, so a plugin
    runs unchanged on the embedded SQLite file and on a networked store.

    Inside a homeserver transaction (the appservice wire's unit of work, see
    :mod:`servletkit.store.units`) writes are held until the transaction is
    committed, and reads see them; elsewhere a write is durable when its
    ``await`` returns.
    """

    def __init__(self, store: Store, plugin: str) -> None:
        self._store = store
        self._plugin = plugin

    async def get(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default``."""
        batch = current_batch()
        if batch is not None and (self._plugin, key) in batch.writes:
            text = batch.writes[(self._plugin, key)]
        else:
            text = await self._store.get(self._plugin, key)
        return default if text is None else json.loads(text)

    async def put(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON-serialisable) under ``key``, replacing what was there."""
        if not isinstance(key, str):
            raise TypeError(f"store keys must be str, got {type(key).__name__}")
        await self._write({key: json.dumps(value)})

    async def delete(self, key: str) -> None:
        """Forget ``key`` (no error if it is not there)."""
        await self._write({key: None})

    async def put_many(self, values: Mapping[str, Any], delete: Iterable[str] = ()) -> None:
        """Store each of ``values`` and forget each key of ``delete``, in one commit (one
        write to the database for many keys: what a plugin that buffers its writes wants)."""
        writes: dict[str, str | None] = dict.fromkeys(delete)
        for key, value in values.items():
            if not isinstance(key, str):
                raise TypeError(f"store keys must be str, got {type(key).__name__}")
            writes[key] = json.dumps(value)
        if writes:
            await self._write(writes)

    async def update(self, key: str, change: Callable[[Any], tuple[Any, T]]) -> T:
        """Replace ``key``'s value by what ``change`` makes of it, atomically among every
        container instance on this store, and return ``change``'s result.

        ``change(value)`` gets the stored value (``None`` if absent) and returns ``(new
        value, result)``; a new value of ``None`` deletes the key. It must be synchronous
        and free of side effects (a store may call it again). Two updates of one key,
        from any instances, never see the same value: a shared counter stays exact::

            count = await context.store.update("joins", lambda n: ((n or 0) + 1, (n or 0) + 1))

        Unlike :meth:`put`, an update is committed at once even inside a unit of work
        (what it counts is shared as it happens); do not also ``put`` that key there.
        """
        if not isinstance(key, str):
            raise TypeError(f"store keys must be str, got {type(key).__name__}")
        batch = current_batch()
        if batch is not None and (self._plugin, key) in batch.writes:
            raise ValueError(f"store key {key!r} has a put pending in this unit of work; "
                             "update a key only with update()")

        def change_text(text: str | None) -> tuple[str | None, T]:
            value, result = change(None if text is None else json.loads(text))
            return (None if value is None else json.dumps(value)), result

        return await self._store.update(self._plugin, key, change_text)

    async def items(self, prefix: str = "") -> list[tuple[str, Any]]:
        """Every ``(key, value)`` whose key starts with ``prefix``, sorted by key."""
        found: dict[str, str | None] = dict(await self._store.items(self._plugin, prefix))
        batch = current_batch()
        if batch is not None:
            for (plugin, key), text in batch.writes.items():
                if plugin == self._plugin and key.startswith(prefix):
                    found[key] = text
        return [(key, json.loads(text)) for key, text in sorted(found.items())
                if text is not None]

    async def singleton(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work()`` on exactly one of the container instances sharing this store,
        taken over by another within seconds when that one dies; never returns.

        Start it as a task in ``servlet_init`` and cancel it in ``servlet_destroy``::

            task = asyncio.create_task(context.store.singleton("component", connect))
            ...
            task.cancel()

        ``work`` should run until cancelled (it is cancelled when this instance
        loses its hold, and started again after it returns or raises); ``name``
        is this plugin's own (two plugins may use the same one). The rules, and
        the one case of overlap, are in :mod:`servletkit.store.singleton`.
        """
        await run_singleton(self._store, f"singleton:{self._plugin}:{name}", work)

    async def _write(self, texts: dict[str, str | None]) -> None:
        writes = {(self._plugin, key): text for key, text in texts.items()}
        batch = current_batch()
        if batch is not None:
            batch.writes.update(writes)
        else:
            await self._store.commit(Batch(writes=writes))
