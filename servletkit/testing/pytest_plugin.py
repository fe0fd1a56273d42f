"""servletkit's pytest plugin, active wherever servletkit is installed (``pytest11`` entry point).

Fixtures:

``plugin_runner``
    an async factory: ``run = await plugin_runner(my_plugin, {"words": ["x"]})`` starts
    the plugin in a container of its own (its config table, an empty store; the
    real dispatcher, no server) and returns a
    :class:`~servletkit.testing.kit.PluginRunner`; it is stopped after the test.

The event factories and decision assertions are in :mod:`servletkit.testing`
(``message``, ``state``, ``join``, ``invite``; ``assert_vetoed``,
``assert_allowed``, ``assert_modified``). Async fixtures need pytest-asyncio.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from servletkit.testing.kit import PluginRunner, RunnerFactory

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - without pytest-asyncio there is no async fixture
    pass
else:

    @pytest_asyncio.fixture
    async def plugin_runner() -> AsyncIterator[RunnerFactory]:
        """Start plugins for this test: ``await plugin_runner(plugin, config, name=...)``."""
        async with contextlib.AsyncExitStack() as stack:

            async def start(plugin: Any, config: Mapping[str, Any] | None = None, *,
                            name: str = "plugin",
                            container_config: Mapping[str, Any] | None = None,
                            ) -> PluginRunner:
                return await stack.enter_async_context(PluginRunner.start(
                    plugin, config, name=name, container_config=container_config))

            yield start

