"""The store a config asks for: ``[store] path`` (the SQLite file) or ``[store] url``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from servletkit.container.config_tables import ConfigError
from servletkit.store.interface import Store
from servletkit.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from servletkit.container.config import Config

#: The schemes of ``[store] url`` that name a PostgreSQL database (as libpq accepts them).
POSTGRES_SCHEMES = ("postgresql", "postgres")


def store_from_config(config: Config) -> Store:
    """The store ``config``'s ``[store]`` section names, not yet opened.

    Without ``url``: the embedded SQLite file at ``path`` (relative to the config
    file). With ``url``: the store its scheme names, ``postgresql://`` (or
    ``postgres://``) for :class:`~servletkit.store.postgres.PostgresStore`; any
    other ``url`` is a :class:`ConfigError` naming ``store.url``. Messages never
    quote more of the URL than its scheme (the rest may hold a password).
    """
    settings = config.store
    if settings.url is not None:
        scheme, separator, _ = settings.url.partition("://")
        if separator and scheme.lower() in POSTGRES_SCHEMES:
            try:
                from servletkit.store.postgres import PostgresStore
            except ImportError as error:
                raise ConfigError(config.path, "store.url",
                                  f"a PostgreSQL store needs psycopg ({error.name} is not "
                                  "installed): pip install 'servletkit[postgres]'") from None
            return PostgresStore(settings.url, transactions_kept=settings.transactions_kept,
                                 audit_kept=settings.audit_kept, pool_size=settings.pool_size)
        what = f"the scheme {scheme!r}" if separator else "a URL without a scheme"
        raise ConfigError(config.path, "store.url",
                          f"no store for {what}: use postgresql://USER:PASSWORD@HOST/DB "
                          "for PostgreSQL, or remove url and set path (the SQLite file, "
                          "relative to this config)")
    return SqliteStore(
        config.resolve(settings.path),
        synchronous=settings.synchronous,
        transactions_kept=settings.transactions_kept,
        audit_kept=settings.audit_kept,
    )
