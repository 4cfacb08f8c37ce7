"""``photos.sqlite``: the schema, opening it (writable, read-only, on read-only media), and
turning SQLite's failures into one-line messages that say which file and what to do.

Writers use WAL with ``synchronous=FULL`` and checkpoint after every committed batch, so the
main file holds every commit but the last: losing ``photos.sqlite-wal`` after a crash costs at
most one batch, and ``--repair`` takes those rows back through ``descriptors.idx``.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, Iterable

from geoloc.database.layout import FORMAT_VERSION, SQLITE, repair_hint
from geoloc.database.records import ADDED_COLUMNS
from geoloc.errors import DatabaseDamagedError, DatabaseError
from geoloc.files import display_path

SCHEMA = """
CREATE TABLE IF NOT EXISTS photos (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT,
    lat REAL,
    lon REAL,
    alt REAL,
    taken_at TEXT,
    gps_accuracy_m REAL,
    width INTEGER,
    height INTEGER,
    row INTEGER NOT NULL UNIQUE,
    indexed_at TEXT,
    gps_source TEXT,
    sidecar_key TEXT,
    camera_make TEXT,
    camera_model TEXT,
    camera_serial TEXT,
    gps_time TEXT,
    time_tag TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
"""

#: SQLite's words for a file that is not (or no longer) a database it can read.
_DAMAGE_WORDS = ("malformed", "not a database", "file is encrypted", "disk i/o error", "no such table",
                 "no such column", "corrupt")


class Connection:
    """A ``sqlite3`` connection whose failures come out as geoloc's one-line errors.

    A damaged file can fail at any query, not only when it is opened (a page read for the first
    time turns out to be garbage), so every statement goes through here.
    """

    def __init__(self, conn: sqlite3.Connection, db_path: Path):
        self.raw = conn
        self.db_path = db_path

    def _failed(self, exc: sqlite3.Error) -> DatabaseError:
        text = str(exc)
        where = f"database {display_path(self.db_path)}"
        if any(word in text.lower() for word in _DAMAGE_WORDS):
            return DatabaseDamagedError(where, [f"{SQLITE} is unreadable ({text})"],
                                        repair_hint(display_path(self.db_path)))
        if "full" in text.lower():
            return DatabaseError(f"cannot write {where}: {SQLITE}: {text}; free some space and run "
                                 "again (what is stored is kept)")
        return DatabaseError(f"{where}: {SQLITE}: {text}")

    def execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        try:
            return self.raw.execute(sql, tuple(params))
        except sqlite3.Error as exc:
            raise self._failed(exc) from None

    def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> sqlite3.Cursor:
        try:
            return self.raw.executemany(sql, rows)
        except sqlite3.IntegrityError as exc:
            # A row number or path twice: the file no longer agrees with itself.
            raise DatabaseDamagedError(f"database {display_path(self.db_path)}",
                                       [f"{SQLITE} refuses a write ({exc})"],
                                       repair_hint(display_path(self.db_path))) from None
        except sqlite3.Error as exc:
            raise self._failed(exc) from None

    def fetch_all(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        cursor = self.execute(sql, params)
        try:
            return cursor.fetchall()
        except sqlite3.Error as exc:
            raise self._failed(exc) from None

    def fetch_one(self, sql: str, params: Iterable[Any] = ()) -> tuple | None:
        cursor = self.execute(sql, params)
        try:
            return cursor.fetchone()
        except sqlite3.Error as exc:
            raise self._failed(exc) from None

    def iterate(self, sql: str, params: Iterable[Any] = ()):
        cursor = self.execute(sql, params)
        while True:
            try:
                rows = cursor.fetchmany(1000)
            except sqlite3.Error as exc:
                raise self._failed(exc) from None
            if not rows:
                return
            yield from rows

    def close(self) -> None:
        self.raw.close()


def connect(path: Path, *, write: bool, create: bool = False) -> Connection:
    """The database's SQLite file; a writer creates the schema only when ``create`` is set
    (a missing file in an existing database is damage, never an empty database)."""
    file = path / SQLITE
    where = f"database {display_path(path)}"
    if not file.exists() and not create:
        raise DatabaseDamagedError(where, [f"{SQLITE} is missing"], repair_hint(display_path(path)))
    try:
        conn = _open_writer(file) if write else _open_reader(path, file)
    except sqlite3.Error as exc:
        text = str(exc)
        if any(word in text.lower() for word in _DAMAGE_WORDS):
            raise DatabaseDamagedError(where, [f"{SQLITE} is unreadable ({text})"],
                                       repair_hint(display_path(path))) from None
        raise DatabaseError(f"{where}: cannot open {SQLITE}: {text}") from None
    wrapped = Connection(conn, path)
    try:
        version = wrapped.fetch_one("PRAGMA user_version")[0]
        if version > FORMAT_VERSION:
            raise DatabaseError(
                f"{where}: {SQLITE} was written by a newer geoloc (schema {version}, this geoloc "
                f"reads up to {FORMAT_VERSION}); upgrade geoloc to use it"
            )
        if write:
            if not create and not wrapped.fetch_one(
                    "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('photos', 'meta')")[0] == 2:
                raise DatabaseDamagedError(where, [f"{SQLITE} is empty or not a geoloc database file"],
                                           repair_hint(display_path(path)))
            wrapped.execute("PRAGMA journal_mode=WAL")
            wrapped.execute("PRAGMA synchronous=FULL")
            if create:
                try:
                    conn.executescript(SCHEMA)
                except sqlite3.Error as exc:
                    raise wrapped._failed(exc) from None
                if version == 0:
                    wrapped.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
        wrapped.execute("PRAGMA busy_timeout=10000")
        if not write:
            wrapped.fetch_one("SELECT COUNT(*) FROM photos")  # "no such table": damage, said now
    except BaseException:
        conn.close()
        raise
    return wrapped


def _open_writer(file: Path) -> sqlite3.Connection:
    return sqlite3.connect(file, isolation_level=None, check_same_thread=False)


def _open_reader(path: Path, file: Path) -> sqlite3.Connection:
    uri = "file:" + _uri_path(file) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        conn.execute("SELECT COUNT(*) FROM meta").fetchone()
    except sqlite3.OperationalError:
        if os.access(path, os.W_OK):
            raise
        conn = _read_only_media(path, file, uri)
    conn.execute("PRAGMA query_only=1")
    return conn


def _read_only_media(path: Path, file: Path, uri: str) -> sqlite3.Connection:
    """A database on read-only media (a DVD, a read-only mount, another user's folder).

    WAL needs a writable folder for its index file. Without a WAL the file can be read as
    immutable; with one, the commits it holds would be invisible that way, so the file and its
    WAL are copied to a private temporary folder and read there.
    """
    wal = Path(str(file) + "-wal")
    if not (wal.exists() and wal.stat().st_size > 0):
        return sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None, check_same_thread=False)
    folder = Path(tempfile.mkdtemp(prefix="geoloc-ro-"))
    shutil.copy2(file, folder / SQLITE)
    shutil.copy2(wal, folder / (SQLITE + "-wal"))
    conn = sqlite3.connect(folder / SQLITE, isolation_level=None, check_same_thread=False)
    conn.execute("SELECT COUNT(*) FROM meta").fetchone()  # replays the WAL into the copy

    import atexit

    atexit.register(shutil.rmtree, folder, True)
    return conn


def _uri_path(file: Path) -> str:
    from urllib.parse import quote

    return quote(os.fsencode(file.absolute()), safe="/")


def photo_columns(conn: Connection) -> set[str]:
    """The columns ``photos`` has in this file (an older geoloc's file lacks the added ones)."""
    return {row[1] for row in conn.fetch_all("PRAGMA table_info(photos)")}


def add_missing_columns(conn: Connection) -> list[str]:
    """Give an existing database the columns added since its file was made; the names added.

    ``ALTER TABLE … ADD COLUMN`` keeps every row and leaves the new values ``NULL``, which
    every reader understands (the schema version does not change: older geoloc versions go on
    reading and writing the file, and simply leave the new columns alone).
    """
    have = photo_columns(conn)
    missing = [(name, kind) for name, kind in ADDED_COLUMNS if name not in have]
    if missing:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for name, kind in missing:
                conn.execute(f"ALTER TABLE photos ADD COLUMN {name} {kind}")
        except BaseException:
            conn.raw.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return [name for name, _ in missing]
