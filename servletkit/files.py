"""Files that hold secrets (written atomically, readable by their owner only), and
folders that one process at a time may own (an ``flock`` on a lock file in them).

Below every layer: the wires, the container and ``servletkit dev`` use it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import TextIO


def write_private(path: Path, text: str | bytes) -> None:
    """Write ``text`` to ``path`` atomically, with mode 0600 (it holds secrets).

    The text goes to a new file beside ``path`` that is then renamed over it, so
    an existing ``path`` (whatever its mode) is replaced, never left readable.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # a leftover could have another mode; O_CREAT would keep it
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(text.encode() if isinstance(text, str) else text)
    tmp.replace(path)


class FolderBusy(Exception):
    """Another process holds the lock file; ``owner`` is its pid as it wrote it ("" if it
    has only just locked it)."""

    def __init__(self, lock: Path, owner: str) -> None:
        holder = f"pid {owner}" if owner else "a process just starting"
        super().__init__(f"{lock} is held by {holder}")
        self.lock = lock
        self.owner = owner


def claim_lock(lock: Path) -> TextIO:
    """Take ``lock`` (created if missing, mode 0600) for this process and write its pid in
    it; :class:`FolderBusy` if another process holds it.

    Returns the open lock file: held until it is closed or the process ends (the
    kernel releases it then, so a crash leaves nothing stale). Of two processes
    claiming it at the same moment, exactly one gets it.
    """
    lock.parent.mkdir(parents=True, exist_ok=True)
    file = os.fdopen(os.open(lock, os.O_RDWR | os.O_CREAT, 0o600), "r+", encoding="utf-8")
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = file.read().strip()
        file.close()
        raise FolderBusy(lock, owner) from None
    except BaseException:
        file.close()
        raise
    file.truncate()
    file.write(f"{os.getpid()}\n")
    file.flush()
    return file
