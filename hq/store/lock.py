"""One serving HQ per SQLite file: an OS lock on ``<database>.lock``, held while HQ serves.

HQ numbers an SQLite file's messages in memory, so two processes serving one file would hand out
the same ids (UNIQUE constraint failures) and miss each other's broadcasts. The lock is an advisory
``flock`` that the kernel releases when the process ends, however it ends, so a killed HQ never
blocks the next start. Only ``serve`` takes it: the ``agents`` commands may run beside a serving HQ.
PostgreSQL needs no lock; several nodes share one database by design.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_SQLITE = "sqlite:///"


class StoreInUseError(Exception):
    """Another live process already serves this SQLite file."""

    def __init__(self, database: Path, pid: int | None) -> None:
        holder = f" (pid {pid})" if pid is not None else ""
        super().__init__(f"{database} is already served by another HQ process{holder}")
        self.database = database
        self.pid = pid


def lock_path(database: Path) -> Path:
    """The lock file beside ``database`` (a separate file: SQLite's own locks stay untouched)."""
    return database.with_name(database.name + ".lock")


@contextmanager
def serving_lock(storage_url: str) -> Iterator[None]:
    """Hold the serving lock of ``storage_url``'s SQLite file; raise :class:`StoreInUseError` if taken.

    A PostgreSQL URL takes no lock.
    """
    if not storage_url.startswith(_SQLITE):
        yield
        return
    # Resolved, so that two spellings of one file (a symlink, ``..``) meet at the same lock.
    database = Path(storage_url.removeprefix(_SQLITE)).resolve()
    database.parent.mkdir(parents=True, exist_ok=True)
    # No O_TRUNC: opening must not erase the holder's pid before we know whether we hold the lock.
    fd = os.open(lock_path(database), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreInUseError(database, _holder_pid(fd)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        # Closing releases the lock. The file stays: unlinking it could let a starting HQ lock a
        # fresh file while another still holds the old one.
        os.close(fd)


def _holder_pid(fd: int) -> int | None:
    # The holder writes its pid just after locking; a start racing that moment reads nothing.
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None
