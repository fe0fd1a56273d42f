"""Dev extensions: services a plugin distribution starts beside ``servletkit dev``'s Synapse.

A distribution offers one with an entry point in the group ``servletkit.dev``
(its name is the flag: ``xmpp`` gives ``servletkit dev --xmpp``)::

    [project.entry-points."servletkit.dev"]
    xmpp = "servletkit_xmpp_gateway.local:dev_extension"

The object it names is a :data:`DevExtension`: called with the wired config
(the dev homeserver's URL, tokens and store already in it) and a folder of its
own in the state folder, it starts what it needs and returns a
:class:`StartedExtension`: the config the container should run with (its
plugin's table, appservice namespaces), lines for the summary, facts for
``dev.json`` (under ``"extensions": {NAME: ...}``) and how to stop. Only the
names are read when the parser is built; an extension's code is imported only
when its flag is given, so the core never imports a plugin.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Final

import attrs

from servletkit.container.config import Config
from servletkit.dev.errors import DevError

GROUP: Final = "servletkit.dev"


@attrs.frozen
class StartedExtension:
    """What a dev extension started: the config to run with, and what to tell the user.

    ``config``: the wired config with the extension's additions. ``summary``:
    lines for ``servletkit dev``'s summary block (label and text, like
    ``("XMPP account", "dev@localhost   password …")``). ``facts``: JSON-able
    facts for scripts, written to ``dev.json``. ``stop``: stops what was
    started (called once, after the container has stopped).
    """

    config: Config
    summary: tuple[tuple[str, str], ...]
    facts: Mapping[str, Any]
    stop: Callable[[], None]


DevExtension = Callable[[Config, Path], StartedExtension]
"""Start a dev extension for the wired config, keeping its state in the folder given."""


def available_extensions() -> dict[str, EntryPoint]:
    """The installed dev extensions by name (their code is not imported)."""
    return {point.name: point for point in entry_points(group=GROUP)}


def load_extension(name: str) -> DevExtension:
    """Import the dev extension ``name``; :class:`DevError` if it is missing or broken."""
    point = available_extensions().get(name)
    if point is None:
        raise DevError(f"no dev extension {name!r} is installed (entry point group {GROUP!r}); "
                       f"install the plugin distribution that provides it")
    try:
        extension = point.load()
    except Exception as exc:
        raise DevError(f"the dev extension {name!r} ({point.value}) cannot be imported: "
                       f"{type(exc).__name__}: {exc}") from None
    if not callable(extension):
        raise DevError(f"the dev extension {name!r} ({point.value}) is not callable")
    return extension  # type: ignore[no-any-return]
