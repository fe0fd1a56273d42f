"""The store a config asks for: ``[store] path`` (the SQLite file) or, later, ``[store] url``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from servletkit.container.config_tables import ConfigError
from servletkit.store.interface import Store
from servletkit.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from servletkit.container.config import Config


def store_from_config(config: Config) -> Store:
    """The store ``config``'s ``[store]`` section names, not yet opened.

    Without ``url``: the embedded SQLite file at ``path`` (relative to the config
    file). A networked store is chosen by the scheme of ``url``; none is built in
    yet, so any ``url`` is a :class:`ConfigError` naming ``store.url``.
    """
    settings = config.store
    if settings.url is not None:
        # only the scheme is quoted: the rest of a database URL may hold a password
        scheme, separator, _ = settings.url.partition("://")
        what = f"the scheme {scheme!r}" if separator else "a URL without a scheme"
        raise ConfigError(config.path, "store.url",
                          f"no store for {what} in this servletkit (it has the SQLite file "
                          "only): remove url and set path (the file, relative to this config)")
    return SqliteStore(
        config.resolve(settings.path),
        synchronous=settings.synchronous,
        transactions_kept=settings.transactions_kept,
        audit_kept=settings.audit_kept,
    )
