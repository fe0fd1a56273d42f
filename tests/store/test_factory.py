"""The store a config names: the SQLite file by path, PostgreSQL by URL; other schemes refused."""

from __future__ import annotations

import pytest

from servletkit.container.config import parse_config
from servletkit.container.config_tables import ConfigError
from servletkit.store import SqliteStore, store_from_config


def test_path_chooses_the_sqlite_file_next_to_the_config(tmp_path):
    """[store] path (relative to the config file) is the SQLite file, with its settings."""
    config = parse_config({"store": {"path": "state/s.db", "synchronous": "full",
                                     "transactions_kept": 5, "audit_kept": 7}},
                          tmp_path / "servletkit.toml")
    store = store_from_config(config)
    assert isinstance(store, SqliteStore)
    assert (store.path, store.synchronous, store.transactions_kept, store.audit_kept) == (
        tmp_path / "state" / "s.db", "FULL", 5, 7)


def test_the_default_is_servletkit_db(tmp_path):
    """Without a [store] section the file is servletkit.db beside the config."""
    store = store_from_config(parse_config({}, tmp_path / "servletkit.toml"))
    assert isinstance(store, SqliteStore)
    assert store.path == tmp_path / "servletkit.db"


@pytest.mark.parametrize("url", ["postgresql://servletkit:secret@db:5433/servletkit",
                                 "postgres://servletkit:secret@db/servletkit"])
def test_a_postgresql_url_chooses_the_postgres_store(tmp_path, url):
    """[store] url with a postgresql (or postgres) scheme is the PostgreSQL store, with the
    [store] bounds and pool_size; its repr hides the password."""
    from servletkit.store.postgres import PostgresStore

    config = parse_config({"store": {"url": url, "transactions_kept": 5, "audit_kept": 7,
                                     "pool_size": 3}}, tmp_path / "servletkit.toml")
    store = store_from_config(config)
    assert isinstance(store, PostgresStore)
    assert (store.url, store.transactions_kept, store.audit_kept, store.pool_size) == (
        url, 5, 7, 3)
    assert "secret" not in repr(store)
    assert "servletkit:***@db" in repr(store)


def test_pool_size_must_be_positive(tmp_path):
    """pool_size = 0 is refused naming store.pool_size."""
    with pytest.raises(ConfigError, match=r"store\.pool_size"):
        parse_config({"store": {"url": "postgresql://db/s", "pool_size": 0}},
                     tmp_path / "servletkit.toml")


@pytest.mark.parametrize(("url", "named"), [
    ("mysql://servletkit:secret@db/servletkit", "the scheme 'mysql'"),
    ("servletkit.db", "a URL without a scheme"),
])
def test_an_unknown_url_is_refused_naming_the_key(tmp_path, url, named):
    """A url no store answers to is a ConfigError naming store.url, without the password."""
    config = parse_config({"store": {"url": url}}, tmp_path / "servletkit.toml")
    with pytest.raises(ConfigError, match=r"store\.url") as caught:
        store_from_config(config)
    assert caught.value.key == "store.url"
    assert named in caught.value.problem
    assert "secret" not in str(caught.value)
