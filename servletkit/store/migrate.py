"""``servletkit store migrate``: move a deployment's state to another store.

``--from PATH_OR_URL`` (default: the store ``--config`` names) is read whole and
written into ``--to URL`` (or a SQLite path) in one transaction: processed
transactions in their order (so deduplication goes on where it was), every
plugin's data, the audit log. The target must be empty; the source is left as
it was. Stop the container first: writes made during the move are not copied.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Protocol

from servletkit.container.config import Config, load_config
from servletkit.store.factory import POSTGRES_SCHEMES
from servletkit.store.interface import NotEmptyError, StoreContents


class MigrateError(Exception):
    """A migration that cannot be done, said in one line."""


class Movable(Protocol):
    """A store whose whole contents can be read and written (both built-in stores)."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def dump(self) -> StoreContents: ...
    async def restore(self, contents: StoreContents) -> None: ...


def _is_url(where: str) -> bool:
    return where.partition("://")[0].lower() in POSTGRES_SCHEMES and "://" in where


def open_store(where: str, config: Config) -> Movable:
    """The store at ``where``: a ``postgresql://`` URL, else a SQLite file path (relative
    to the current directory), with ``config``'s ``[store]`` bounds."""
    settings = config.store
    if _is_url(where):
        try:
            from servletkit.store.postgres import PostgresStore
        except ImportError:
            raise MigrateError("a PostgreSQL store needs psycopg: "
                               "pip install 'servletkit[postgres]'") from None
        return PostgresStore(where, transactions_kept=settings.transactions_kept,
                             audit_kept=settings.audit_kept)
    if "://" in where:
        raise MigrateError(f"no store for the scheme {where.partition('://')[0]!r}: "
                           "use postgresql://USER:PASSWORD@HOST/DB or a SQLite file path")
    from servletkit.store.sqlite import SqliteStore

    return SqliteStore(Path(where), synchronous=settings.synchronous,
                       transactions_kept=settings.transactions_kept,
                       audit_kept=settings.audit_kept)


async def migrate(source: Movable, target: Movable) -> StoreContents:
    """Copy everything from ``source`` into the empty ``target``; what was copied."""
    await source.open()
    try:
        contents = await source.dump()
    finally:
        await source.close()
    await target.open()
    try:
        await target.restore(contents)
    except NotEmptyError as error:
        raise MigrateError(str(error)) from None
    finally:
        await target.close()
    return contents


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``store migrate --from PATH_OR_URL --to URL`` on the ``store`` command's parser."""
    sub = parser.add_subparsers(dest="store_command", required=True, metavar="STORE_COMMAND")
    move = sub.add_parser("migrate", help="copy a deployment's state into another (empty) "
                          "store, e.g. from the SQLite file to PostgreSQL; stop the "
                          "container first")
    move.add_argument("--from", dest="source", metavar="PATH_OR_URL",
                      help="the store to read (default: the one --config names)")
    move.add_argument("--to", dest="target", required=True, metavar="URL",
                      help="the empty store to fill: postgresql://USER:PASSWORD@HOST/DB "
                           "(or a SQLite file path)")
    move.add_argument("--config", default=argparse.SUPPRESS, metavar="PATH",
                      help="the servletkit.toml whose [store] bounds apply")


def run(args: argparse.Namespace) -> int:
    """Run ``servletkit store migrate``; prints what was moved (never a URL's password)."""
    config = load_config(args.config)
    where = args.source
    if where is None:
        where = config.store.url or str(config.resolve(config.store.path))
    source, target = open_store(where, config), open_store(args.target, config)
    try:
        contents = asyncio.run(migrate(source, target))
    except MigrateError:
        raise
    except Exception as error:  # the driver's reason (a refused connection, a bad file)
        raise MigrateError(f"{type(error).__name__}: {error}") from None
    print(f"moved {len(contents.transactions)} processed transactions, "
          f"{len(contents.data)} plugin values and {len(contents.audit)} audit records")
    return 0
