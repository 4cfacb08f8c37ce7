"""One writer at a time: an exclusive ``flock`` on ``<db>/lock`` that the kernel drops when the
writing process dies, so a ``kill -9`` never leaves a database locked."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from geoloc.database.layout import LOCK
from geoloc.errors import DatabaseError, DatabaseLockedError
from geoloc.files import display_path


class WriteLock:
    def __init__(self, db_path: Path):
        self.path = db_path / LOCK
        self.fd: Optional[int] = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DatabaseError(
                f"cannot write database {display_path(self.path.parent)}: {exc.strerror or exc}"
            ) from None
        try:
            _lock_fd(fd)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            who = f"pid {pid}" if pid else "pid unknown"
            raise DatabaseLockedError(
                f"database {display_path(self.path.parent)} is being written by another geoloc "
                f"process ({who}); wait for it to finish or stop it, then run again"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise DatabaseError(
                f"cannot lock database {display_path(self.path.parent)}: {exc.strerror or exc}"
            ) from None
        try:  # who holds the lock, for the message a second writer gets; a full disk may refuse it
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def lock_holder(db_path: Path) -> Optional[str]:
    """Who is writing the database at ``db_path`` right now ("pid 1234", "pid unknown"), or
    None when no process is: for a reader, whose answer depends on it ("empty" is not the same
    as "being built").

    The lock is tested, never taken from its holder: a released lock leaves an empty file (the
    writer truncates it), so only a file that names a pid — a writer at work, or one killed —
    is tried with a shared, non-blocking flock, dropped at once. Where that cannot be done
    (Windows), a pid on record is taken at its word.
    """
    try:
        fd = os.open(Path(db_path) / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        pid = _read_pid(fd)
        if pid is None:
            return None
        try:
            import fcntl
        except ImportError:  # Windows: msvcrt cannot test a lock without taking it
            return f"pid {pid}"
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return f"pid {pid}"
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None  # the pid of a writer that died: nobody holds the lock
    finally:
        os.close(fd)


def _lock_fd(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            raise BlockingIOError(str(exc)) from None
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _read_pid(fd: int) -> Optional[int]:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
