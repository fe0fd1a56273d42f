"""servletkit store migrate: a deployment's state moves from the SQLite file to PostgreSQL
(and back), whole and in order, into an empty store only."""

from __future__ import annotations

import asyncio

from servletkit.container.cli import main as cli
from servletkit.store import AuditRecord, Batch, PluginStore, ProcessedTransaction, SqliteStore
from servletkit.store.postgres import PostgresStore
from tests.store.conftest import rows


async def fill(store) -> list[AuditRecord]:
    records = [AuditRecord("p", "on_send_event", "veto", f"$e{n}", "!r", "spam")
               for n in range(3)]
    for n in range(12):
        await store.commit(Batch(), ProcessedTransaction(str(n), f"d{n}"))
    await PluginStore(store, "bridge").put("room/1", {"mxid": "@x:y"})
    await PluginStore(store, "flood").put("count", 3)
    await store.commit(Batch(audit=records))
    await store.close()
    return records


async def main(argv: list[str]) -> int:
    """The CLI in a thread of its own (it runs its own event loop, as from a shell)."""
    return await asyncio.to_thread(cli, argv)


def config(tmp_path, url=None):
    path = tmp_path / "servletkit.toml"
    path.write_text("[store]\ntransactions_kept = 10\n"
                    + (f'url = "{url}"\n' if url else 'path = "s.db"\n'))
    return str(path)


async def test_sqlite_to_postgres_and_back(tmp_path, postgres_url, capsys):
    """Everything moves: the kept transactions in order (pruning goes on from the oldest),
    each plugin's data, the audit log; the command says how much, never the password."""
    records = await fill(SqliteStore(tmp_path / "s.db", transactions_kept=10))
    assert await main(["store", "migrate", "--to", postgres_url, "--config", config(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith(
        "moved 10 processed transactions, 2 plugin values and 3 audit records")

    moved = PostgresStore(postgres_url, transactions_kept=10)
    assert [await moved.processed_digest(str(n)) for n in range(12)] == (
        [None] * 2 + [f"d{n}" for n in range(2, 12)])
    assert await PluginStore(moved, "bridge").get("room/1") == {"mxid": "@x:y"}
    assert await moved.audit_log() == records
    await moved.commit(Batch(), ProcessedTransaction("12", "d12"))  # prunes the oldest
    assert await moved.processed_digest("2") is None
    assert await moved.processed_digest("3") == "d3"
    await moved.close()

    back = tmp_path / "back.db"
    assert await main(["store", "migrate", "--from", postgres_url, "--to", str(back),
                 "--config", config(tmp_path)]) == 0
    again = SqliteStore(back)
    assert await again.processed_digest("12") == "d12"
    assert await PluginStore(again, "flood").get("count") == 3
    assert await again.audit_log() == records
    await again.close()


async def test_a_target_with_data_is_refused(tmp_path, postgres_url, capsys):
    """Moving into a store that holds data fails in one line and changes nothing."""
    await fill(SqliteStore(tmp_path / "s.db", transactions_kept=10))
    target = PostgresStore(postgres_url)
    await target.commit(Batch(writes={("other", "k"): "1"}))
    await target.close()
    status = await main(["store", "migrate", "--from", str(tmp_path / "s.db"), "--to",
                   postgres_url.replace("servletkit@", "servletkit:hunter2@"),
                   "--config", config(tmp_path)])
    err = capsys.readouterr().err
    assert status == 1
    assert "already holds plugin_data: restore into an empty store" in err
    assert "hunter2" not in err
    check = PostgresStore(postgres_url)
    assert (await rows(check, "plugin_data"), await rows(check, "transactions")) == (1, 0)
    await check.close()


async def test_an_unreachable_target_and_an_unknown_scheme_say_why(tmp_path, capsys):
    """A refused connection or an unknown scheme is one line on stderr, exit status 1."""
    from tests.store.postgres_server import free_port

    cfg = config(tmp_path)
    url = f"postgresql://u:hunter2@127.0.0.1:{free_port()}/x"
    assert await main(["store", "migrate", "--to", url, "--config", cfg]) == 1
    err = capsys.readouterr().err
    assert "OperationalError" in err and "hunter2" not in err
    assert await main(["store", "migrate", "--to", "mysql://h/db", "--config", cfg]) == 1
    assert "no store for the scheme 'mysql'" in capsys.readouterr().err
