"""servletkit's pytest plugin, active wherever servletkit is installed (``pytest11`` entry point).

Fixtures:

``plugin_runner``
    an async factory: ``run = await plugin_runner(my_plugin, {"words": ["x"]})`` starts
    the plugin in a container of its own (its config table, an empty store; the
    real dispatcher, no server) and returns a
    :class:`~servletkit.testing.kit.PluginRunner`; it is stopped after the test.

``servletkit_homeserver`` (session)
    a real ``servletkit dev`` for integration tests: Synapse on loopback wired to
    the container by both wires, one per test session; the value is its
    ``dev.json`` facts (``homeserver_url``, ``test_user`` …). The plugins that run
    are those of the ``servletkit_dev_plugins`` fixture (name → config table;
    default: every installed plugin), which a ``conftest.py`` may override.

The event factories and decision assertions are in :mod:`servletkit.testing`
(``message``, ``state``, ``join``, ``invite``; ``assert_vetoed``,
``assert_allowed``, ``assert_modified``). Async fixtures need pytest-asyncio.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import pytest

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



@pytest.fixture(scope="session")
def servletkit_dev_plugins() -> Mapping[str, Mapping[str, Any]]:
    """The plugins ``servletkit_homeserver`` runs, name → ``[plugins.NAME]`` table."""
    from servletkit.container.plugins import installed_plugins

    return {name: {} for name in installed_plugins()}


@pytest.fixture(scope="session")
def servletkit_homeserver(
    tmp_path_factory: pytest.TempPathFactory,
    servletkit_dev_plugins: Mapping[str, Mapping[str, Any]],
) -> Iterator[dict[str, Any]]:
    """A real homeserver wired to the container (``servletkit dev``); its dev.json facts."""
    from servletkit.testing.dev import DevProcess, write_dev_config

    config = write_dev_config(tmp_path_factory.mktemp("servletkit-homeserver"),
                              servletkit_dev_plugins)
    run = DevProcess.start(config, timeout=120.0)
    try:
        yield run.facts
    finally:
        run.stop()
