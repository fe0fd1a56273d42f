"""Another process holding an SQLite file's write lock, for tests of what waits on it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
db.execute("INSERT INTO plugin_data VALUES ('locker', 'k', '1')")
print("locked", flush=True)
sys.stdin.read()
db.execute("ROLLBACK")
"""


@contextlib.contextmanager
def locked(database: Path) -> Iterator[None]:
    """Another process holds SQLite's write lock on ``database`` inside the block."""
    with subprocess.Popen([sys.executable, "-c", LOCKER, str(database)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as locker:
        assert locker.stdin is not None and locker.stdout is not None
        assert locker.stdout.readline() == "locked\n"
        try:
            yield
        finally:
            locker.stdin.close()
            locker.wait(10)
