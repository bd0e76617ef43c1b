"""StoreLock: one server process per SQLite file, held by a kernel lock on a file beside it.

The SQLite store expires every lease it finds when it opens (one process owns the file, so
their process is gone) and wakes a watch only for the writes of its own process. A second server
on the same file (`make run` in two terminals, a restart that starts the new process before the
old one has stopped) took over the first's running tasks while the first still ran them, and
its watchers missed the first's events; it is refused at start now. The lock is flock(2): it
goes with its process, kill -9 included, so a restart never meets a stale one.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from mcp_server.errors import StartupError

IN_USE = (
    "the SQLite store at {where} is in use by another server process{holder}: the embedded store serves "
    "one process; stop that one first, or use a Redis store (redis://) for several"
)


class StoreLock:
    """The lock on `<database>.lock`, holding this process's pid for whoever is refused."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def take(cls, database: Path) -> StoreLock | None:
        """Lock `database` for this process; StartupError if another holds it. None when no lock
        file can be made there (the store's own open then says why it cannot use the place)."""
        try:
            database.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(database.with_name(database.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise StartupError(IN_USE.format(where=database, holder=f" (pid {pid})" if pid else "")) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return cls(fd)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
