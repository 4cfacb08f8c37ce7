"""A review's decisions, kept with the database (``DB/review/decisions.sqlite``).

A review is left and resumed over days: each accept, reject or correction is one SQLite
transaction (WAL, ``synchronous=FULL``) the moment the user makes it, so a killed server or a
closed laptop loses nothing already clicked. The file lives in the database folder's own
``review`` folder (kept across a refit, like the tracks), and is only ever created there: a file
of that name that is not a SQLite database is refused with one line, never replaced.

Photos are keyed by their resolved path, as the database stores them. A decision that was
applied (written into the photo or a sidecar) keeps its ``applied_at``; rejected photos and
applied ones are not proposed again unless the user asks (``geoloc review --again``).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from geoloc.database.layout import REVIEW
from geoloc.errors import DatabaseError
from geoloc.files import display_path

FILE = "decisions.sqlite"
#: What a user can decide about an estimate.
ACCEPTED, REJECTED, CORRECTED = "accepted", "rejected", "corrected"
KINDS = (ACCEPTED, REJECTED, CORRECTED)
_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    path TEXT PRIMARY KEY,
    decision TEXT NOT NULL CHECK (decision IN ('accepted', 'rejected', 'corrected')),
    lat REAL,
    lon REAL,
    decided_at TEXT NOT NULL,
    applied_at TEXT,
    applied_to TEXT
);
"""


@dataclass
class Decision:
    path: str
    decision: str
    lat: float | None = None  # a correction's position (accepts take the estimate's)
    lon: float | None = None
    decided_at: str = ""
    applied_at: str | None = None
    applied_to: str | None = None  # "exif", "xmp", "exif+xmp"

    @property
    def settled(self) -> bool:
        """Not proposed again: rejected, or already written."""
        return self.decision == REJECTED or self.applied_at is not None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Decisions:
    """The decisions of one database; safe to call from the server's threads."""

    def __init__(self, db: Path):
        folder = Path(db) / REVIEW
        self.path = folder / FILE
        self._lock = threading.Lock()
        try:
            folder.mkdir(exist_ok=True)
            if folder.is_symlink() or not folder.is_dir():
                raise DatabaseError(f"{display_path(folder)} is not geoloc's review folder; move it away to review")
            self._conn = sqlite3.connect(os.fspath(self.path), check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _VERSION:
                raise DatabaseError(f"{display_path(self.path)} was written by a newer geoloc; left as it is")
            self._conn.executescript(_SCHEMA)
            self._conn.execute(f"PRAGMA user_version={_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise DatabaseError(f"cannot use {display_path(self.path)}: {exc}; it is left as it is "
                                "(move it away to start the review afresh)") from None
        except OSError as exc:
            raise DatabaseError(f"cannot keep review decisions in {display_path(folder)}: "
                                f"{exc.strerror or exc}") from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "Decisions":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def all(self) -> dict[str, Decision]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT path, decision, lat, lon, decided_at, applied_at, applied_to FROM decisions").fetchall()
        return {r[0]: Decision(*r) for r in rows}

    def decide(self, paths_and_positions: list[tuple[str, str, float | None, float | None]]) -> None:
        """Record decisions, each ``(path, kind, lat, lon)``, in one transaction; a new decision
        replaces an earlier one of the same photo (and is not applied yet)."""
        for _, kind, lat, lon in paths_and_positions:
            if kind not in KINDS:
                raise ValueError(f"unknown decision {kind!r}")
            if kind == CORRECTED and (lat is None or lon is None):
                raise ValueError("a correction needs a position")
        now = _now()
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                "INSERT OR REPLACE INTO decisions (path, decision, lat, lon, decided_at) VALUES (?, ?, ?, ?, ?)",
                [(p, k, la if k == CORRECTED else None, lo if k == CORRECTED else None, now)
                 for p, k, la, lo in paths_and_positions])

    def undecide(self, paths: list[str]) -> None:
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("DELETE FROM decisions WHERE path = ? AND applied_at IS NULL",
                                   [(p,) for p in paths])

    def mark_applied(self, paths: list[str], where: str) -> None:
        now = _now()
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("UPDATE decisions SET applied_at = ?, applied_to = ? WHERE path = ?",
                                   [(now, where, p) for p in paths])
