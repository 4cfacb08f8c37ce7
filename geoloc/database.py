"""The photo database: a folder that survives ``kill -9`` at any moment.

Layout (see docs/database.md):

- ``manifest.json``: which model and preprocessing built the descriptors (written atomically);
- ``photos.sqlite``: one row per photo (WAL, one transaction per batch);
- ``descriptors.f32``: raw float32 rows, append-only;
- ``vocabulary.safetensors``: fitted NetVLAD centroids, for models that need one;
- ``lock``: one writer at a time.

Crash safety rests on one ordering rule: descriptor bytes are written and fsynced *before* the
SQLite transaction that references them commits, and rows are allocated from the committed
high-water mark (``meta.next_row``). A crash therefore leaves, at worst, unreferenced bytes past
the mark; the next writer truncates them and reuses those row numbers, so a row is never
referenced twice.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from geoloc.errors import DatabaseError, DatabaseLockedError
from geoloc.files import atomic_write, display_path, fsync_dir

MANIFEST = "manifest.json"
SQLITE = "photos.sqlite"
DESCRIPTORS = "descriptors.f32"
COMPACTING = "descriptors.f32.compact"
VOCABULARY = "vocabulary.safetensors"
LOCK = "lock"
#: Everything ``create`` may find left over from a create that crashed before its manifest.
_DATA_FILES = (SQLITE, SQLITE + "-wal", SQLITE + "-shm", DESCRIPTORS, COMPACTING, VOCABULARY)

FORMAT_VERSION = 1
#: Rewrite the descriptor file once dead rows (replaced or removed photos) exceed this fraction.
COMPACT_FRACTION = 0.25
#: ...but never bother for fewer dead rows than this.
COMPACT_MIN_ROWS = 256

_SCHEMA = """
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
    indexed_at TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
"""

_COLUMNS = (
    "path", "size", "mtime_ns", "sha256", "lat", "lon", "alt", "taken_at",
    "gps_accuracy_m", "width", "height", "row",
)


@dataclass
class PhotoRecord:
    """One photo as stored: where the file is, how to tell it changed, where it was taken."""

    path: Path
    size: int
    mtime_ns: int
    sha256: Optional[str] = None
    lat: Optional[float] = None
    lon: Optional[float] = None
    alt: Optional[float] = None
    taken_at: Optional[str] = None
    gps_accuracy_m: Optional[float] = None
    width: Optional[int] = None
    height: Optional[int] = None
    #: Row in descriptors.f32; assigned by ``Database.add_batch``.
    row: int = -1

    @property
    def located(self) -> bool:
        return self.lat is not None and self.lon is not None

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["path"] = display_path(self.path)
        data["located"] = self.located
        return data


def _path_key(path: Path | str) -> str | bytes:
    """How a path is stored: text when it is valid UTF-8, else its raw bytes (so it round-trips)."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text)


def _path_from_key(value: str | bytes) -> Path:
    return Path(os.fsdecode(value) if isinstance(value, bytes) else value)


def _record_from_row(row: sqlite3.Row) -> PhotoRecord:
    values = dict(zip(_COLUMNS, row))
    values["path"] = _path_from_key(values["path"])
    return PhotoRecord(**values)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


class _WriteLock:
    """An exclusive ``flock`` on ``<db>/lock``; the kernel drops it when the process dies."""

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
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            os.close(self.fd)  # closing drops the flock
            self.fd = None


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


class Database:
    """A geoloc database folder. Readers never block; one writer at a time holds the lock."""

    def __init__(self, path: Path, manifest: dict, conn: sqlite3.Connection, write: bool,
                 lock: Optional[_WriteLock]):
        self.path = path
        self.manifest = manifest
        self.dim = int(manifest["dim"])
        self.write = write
        self._conn = conn
        self._lock = lock
        self._row_bytes = self.dim * 4
        self._desc_fd: Optional[int] = None

    # ------------------------------------------------------------------ opening

    @staticmethod
    def exists(path: Path) -> bool:
        """A folder is a database once its manifest is written (the last step of ``create``)."""
        return (Path(path) / MANIFEST).is_file()

    @classmethod
    def open(cls, path: Path, *, write: bool = False) -> "Database":
        path = Path(path).expanduser().absolute()
        if not cls.exists(path):
            raise DatabaseError(f"no geoloc database at {display_path(path)} (run `geoloc index` first)")
        lock = None
        if write:
            lock = _WriteLock(path)
            lock.acquire()
        try:
            manifest = _read_manifest(path)
            conn = _connect(path, write=write)
            db = cls(path, manifest, conn, write, lock)
            if write:
                db._recover()
            else:
                db._check_descriptor_file()
            return db
        except BaseException:
            if lock is not None:
                lock.release()
            raise

    @classmethod
    def create(cls, path: Path, manifest: dict) -> "Database":
        """Make a new, empty database and hold its write lock."""
        path = Path(path).expanduser().absolute()
        for key in ("model", "dim"):
            if key not in manifest:
                raise ValueError(f"manifest needs {key!r}")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(
                f"cannot create database {display_path(path)}: {exc.strerror or exc}"
            ) from None
        lock = _WriteLock(path)
        lock.acquire()
        try:
            if cls.exists(path):
                raise DatabaseError(f"a database already exists at {display_path(path)}")
            foreign = sorted(p.name for p in path.iterdir()
                             if p.name not in (LOCK, *_DATA_FILES) and not p.name.endswith(".tmp"))
            if foreign:  # e.g. --db pointing at a photo folder by mistake
                lock.release()
                (path / LOCK).unlink(missing_ok=True)  # leave the folder as it was
                raise DatabaseError(
                    f"cannot create database {display_path(path)}: the folder is not empty and "
                    f"not a geoloc database (it holds {display_path(foreign[0])}"
                    f"{' and more' if len(foreign) > 1 else ''}); choose a new or empty folder"
                )
            # Leftovers of a create that crashed before its manifest was written.
            for name in _DATA_FILES:
                try:
                    (path / name).unlink()
                except FileNotFoundError:
                    pass
            full = {
                "format": FORMAT_VERSION,
                "dtype": "float32",
                "geoloc_version": _geoloc_version(),
                "created": _now(),
                **manifest,
            }
            full["dim"] = int(full["dim"])
            conn = _connect(path, write=True)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('next_row', 0)")
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('generation', 0)")
            conn.execute("COMMIT")
            open(path / DESCRIPTORS, "ab").close()
            _write_manifest(path, full)
            db = cls(path, full, conn, True, lock)
            return db
        except OSError as exc:
            lock.release()
            raise DatabaseError(
                f"cannot create database {display_path(path)}: {exc.strerror or exc}"
            ) from None
        except BaseException:
            lock.release()
            raise

    def _recover(self) -> None:
        """Bring the folder back to its last committed state after a crash (writers only)."""
        self._finish_compaction()
        for leftover in self.path.glob(".*.tmp"):  # an atomic write killed half-way
            try:
                leftover.unlink()
            except OSError:
                pass
        try:
            size = (self.path / DESCRIPTORS).stat().st_size
        except FileNotFoundError:
            size = 0
        committed = self.next_row * self._row_bytes
        if size < committed:
            raise DatabaseError(
                f"database {display_path(self.path)} is damaged: {DESCRIPTORS} is shorter than "
                f"its index says ({size} < {committed} bytes)"
            )
        fd = self._descriptor_fd()
        if size > committed:  # bytes of a batch whose transaction never committed
            os.ftruncate(fd, committed)
            os.fsync(fd)

    def _check_descriptor_file(self) -> None:
        path = self._descriptor_path()
        size = path.stat().st_size if path.exists() else -1
        if size < self.next_row * self._row_bytes:
            raise DatabaseError(
                f"database {display_path(self.path)} is damaged: {DESCRIPTORS} is missing or "
                "shorter than its index says"
            )

    def _descriptor_path(self) -> Path:
        """Readers follow a compaction that committed but has not been renamed into place yet."""
        if self._meta("compacting", 0) and (self.path / COMPACTING).exists():
            return self.path / COMPACTING
        return self.path / DESCRIPTORS

    def _descriptor_fd(self) -> int:
        if self._desc_fd is None:
            self._desc_fd = os.open(self.path / DESCRIPTORS, os.O_RDWR | os.O_CREAT, 0o644)
        return self._desc_fd

    # ------------------------------------------------------------------ context, closing

    def close(self) -> None:
        if self._desc_fd is not None:
            os.close(self._desc_fd)
            self._desc_fd = None
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None  # type: ignore[assignment]
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------ reading

    def _meta(self, key: str, default: Any = None) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    @property
    def next_row(self) -> int:
        """Rows allocated so far (live + dead); the committed high-water mark."""
        return int(self._meta("next_row", 0))

    def photos(self, located_only: bool = False) -> list[PhotoRecord]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM photos"
        if located_only:
            sql += " WHERE lat IS NOT NULL AND lon IS NOT NULL"
        return [_record_from_row(r) for r in self._conn.execute(sql + " ORDER BY row")]

    def iter_photos(self) -> Iterator[PhotoRecord]:
        """Like ``photos()`` without holding them all in memory at once."""
        cur = self._conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM photos ORDER BY row")
        for r in cur:
            yield _record_from_row(r)

    def file_stats(self) -> Iterator[tuple[str, int, int, Optional[str]]]:
        """``(path, size, mtime_ns, sha256)`` of every photo: all a re-run needs to tell which
        files changed, without building a full record per photo of a large archive."""
        for key, size, mtime_ns, sha256 in self._conn.execute(
                "SELECT path, size, mtime_ns, sha256 FROM photos"):
            yield os.fspath(_path_from_key(key)), size, mtime_ns, sha256

    def get(self, path: Path) -> Optional[PhotoRecord]:
        row = self._conn.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM photos WHERE path = ?", (_path_key(path),)
        ).fetchone()
        return None if row is None else _record_from_row(row)

    def counts(self) -> dict[str, int]:
        total, located = self._conn.execute(
            "SELECT COUNT(*), COUNT(CASE WHEN lat IS NOT NULL AND lon IS NOT NULL THEN 1 END) "
            "FROM photos"
        ).fetchone()
        return {"total": total, "located": located, "unlocated": total - located}

    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM photos").fetchone()[0]

    @property
    def dead_rows(self) -> int:
        """Descriptor rows no photo references any more (replaced or removed photos)."""
        return self.next_row - len(self)

    def _snapshot(self, read):
        """``read()`` run on one consistent view of the database, with the descriptor file's row
        count and path as of that view, retried if a compaction renumbered rows meanwhile.

        A compaction commits new row numbers and then renames its file into place; records,
        row count and file path read outside one snapshot could mix the old and the new.
        """
        for _ in range(5):
            generation = self._meta("generation", 0)
            with self._transaction("BEGIN"):
                value = read()
                next_row = self.next_row
                path = self._descriptor_path()
            if self._meta("generation", 0) == generation:
                return value, next_row, path
        raise DatabaseError(f"database {display_path(self.path)} keeps changing; try again")  # pragma: no cover

    def descriptor_matrix(self, located_only: bool = True) -> tuple[list[PhotoRecord], np.ndarray]:
        """Records and their descriptors, row i of the matrix belonging to record i.

        The matrix is a read-only memory-mapped view when the wanted rows are contiguous (the
        usual case for a database without dead rows); otherwise only the wanted rows are copied.
        """
        records, next_row, path = self._snapshot(lambda: self.photos(located_only=located_only))
        if not records:
            return records, np.zeros((0, self.dim), dtype=np.float32)
        matrix = np.memmap(path, dtype=np.float32, mode="r", shape=(next_row, self.dim))
        rows = np.fromiter((r.row for r in records), dtype=np.int64, count=len(records))
        first = int(rows[0])
        if int(rows[-1]) - first + 1 == len(rows):  # sorted and unique, so contiguous
            return records, matrix[first:first + len(rows)]
        return records, np.ascontiguousarray(matrix[rows])

    def descriptors_for(self, records: list[PhotoRecord]) -> np.ndarray:
        """The stored descriptors of some records (e.g. to compare a query with them).

        Rows are looked up again in the same snapshot as the file is read: a record read before
        a compaction may carry a row number that now belongs to another photo.
        """
        if not records:
            return np.zeros((0, self.dim), dtype=np.float32)
        keys = [_path_key(r.path) for r in records]

        def rows() -> list[int | None]:
            found = {}
            for chunk in range(0, len(keys), 500):
                part = keys[chunk:chunk + 500]
                marks = ",".join("?" * len(part))
                found.update(self._conn.execute(
                    f"SELECT path, row FROM photos WHERE path IN ({marks})", part).fetchall())
            return [found.get(k) for k in keys]

        current, next_row, path = self._snapshot(rows)
        missing = [r.path for r, row in zip(records, current) if row is None]
        if missing:
            raise DatabaseError(f"database {display_path(self.path)}: {display_path(missing[0])} "
                                "was removed while it was being read; try again")
        matrix = np.memmap(path, dtype=np.float32, mode="r", shape=(next_row, self.dim))
        return np.ascontiguousarray(matrix[current])

    # ------------------------------------------------------------------ vocabulary, manifest

    def has_vocabulary(self) -> bool:
        return (self.path / VOCABULARY).is_file()

    def load_vocabulary(self) -> Optional[dict]:
        if not self.has_vocabulary():
            return None
        from safetensors.torch import load_file

        try:
            return load_file(str(self.path / VOCABULARY))
        except Exception as exc:
            raise DatabaseError(
                f"database {display_path(self.path)}: cannot read {VOCABULARY}: {exc}"
            ) from None

    def save_vocabulary(self, state: dict) -> str:
        """Store a fitted vocabulary atomically; returns the file's sha256."""
        self._require_write()
        from safetensors.torch import save

        data = save({k: v.detach().cpu().contiguous() for k, v in state.items()})
        atomic_write(self.path / VOCABULARY, data)
        return hashlib.sha256(data).hexdigest()

    def update_manifest(self, changes: dict) -> None:
        self._require_write()
        manifest = {**self.manifest, **changes}
        _write_manifest(self.path, manifest)
        self.manifest = manifest

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
        self._conn.execute(begin)
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _require_write(self) -> None:
        if not self.write:
            raise DatabaseError(f"database {display_path(self.path)} was opened read-only")

    def add_batch(self, records: list[PhotoRecord], descriptors: np.ndarray) -> None:
        """Store photos and their descriptors in one transaction (all or nothing).

        A photo already in the database is replaced; its old descriptor row becomes dead.
        """
        self._require_write()
        if not records:
            return
        descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
        if descriptors.shape != (len(records), self.dim):
            raise ValueError(
                f"descriptors have shape {descriptors.shape}, expected ({len(records)}, {self.dim})"
            )
        keys = [_path_key(r.path) for r in records]
        if len(set(keys)) != len(keys):
            raise ValueError("a batch lists the same photo twice")
        start = self.next_row
        fd = self._descriptor_fd()
        offset = start * self._row_bytes
        os.ftruncate(fd, offset)  # drop anything a failed earlier batch left behind
        data = memoryview(descriptors).cast("B")
        written = 0
        while written < len(data):
            written += os.pwrite(fd, data[written:], offset + written)
        os.fsync(fd)
        now = _now()
        rows = []
        for i, (record, key) in enumerate(zip(records, keys)):
            record.row = start + i
            rows.append((key, record.size, record.mtime_ns, record.sha256, record.lat, record.lon,
                         record.alt, record.taken_at, record.gps_accuracy_m, record.width,
                         record.height, record.row, now))
        with self._transaction():
            self._conn.executemany(
                "INSERT INTO photos (path, size, mtime_ns, sha256, lat, lon, alt, taken_at, "
                "gps_accuracy_m, width, height, row, indexed_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(path) DO UPDATE SET size=excluded.size, mtime_ns=excluded.mtime_ns, "
                "sha256=excluded.sha256, lat=excluded.lat, lon=excluded.lon, alt=excluded.alt, "
                "taken_at=excluded.taken_at, gps_accuracy_m=excluded.gps_accuracy_m, "
                "width=excluded.width, height=excluded.height, row=excluded.row, "
                "indexed_at=excluded.indexed_at",
                rows,
            )
            self._conn.execute("UPDATE meta SET value = ? WHERE key = 'next_row'",
                               (start + len(records),))

    def update_file_stats(self, changes: Iterable[tuple[Path, int, int]]) -> int:
        """Record a new size/mtime for photos whose content hash proved them unchanged."""
        self._require_write()
        with self._transaction():
            cur = self._conn.executemany(
                "UPDATE photos SET size = ?, mtime_ns = ? WHERE path = ?",
                [(size, mtime_ns, _path_key(p)) for p, size, mtime_ns in changes],
            )
        return cur.rowcount

    def remove(self, paths: Iterable[Path]) -> int:
        self._require_write()
        with self._transaction():
            cur = self._conn.executemany(
                "DELETE FROM photos WHERE path = ?", [(_path_key(p),) for p in paths]
            )
        return max(cur.rowcount, 0)

    def needs_compaction(self) -> bool:
        dead = self.dead_rows
        return dead >= COMPACT_MIN_ROWS and dead > COMPACT_FRACTION * max(self.next_row, 1)

    def compact(self) -> int:
        """Rewrite descriptors.f32 without dead rows; returns how many rows were dropped.

        Crash-safe in three steps: write ``descriptors.f32.compact`` and fsync it; commit the new
        row numbers together with ``compacting=1``; rename the new file into place and clear the
        flag. A crash after the commit is finished by the next writer (``_finish_compaction``),
        and readers in between read the ``.compact`` file.
        """
        self._require_write()
        dead = self.dead_rows
        if dead == 0:
            return 0
        records = self.photos()
        old = np.memmap(self.path / DESCRIPTORS, dtype=np.float32, mode="r",
                        shape=(self.next_row, self.dim)) if self.next_row else None
        tmp = self.path / COMPACTING
        with open(tmp, "wb") as fh:
            chunk = 4096
            for i in range(0, len(records), chunk):
                rows = [r.row for r in records[i:i + chunk]]
                fh.write(np.ascontiguousarray(old[rows]).tobytes())  # type: ignore[index]
            fh.flush()
            os.fsync(fh.fileno())
        del old
        with self._transaction():
            # Records are in increasing old-row order and new rows never exceed old ones, so
            # updating in this order never collides with the UNIQUE constraint.
            self._conn.executemany(
                "UPDATE photos SET row = ? WHERE path = ?",
                [(i, _path_key(r.path)) for i, r in enumerate(records)],
            )
            self._conn.execute("UPDATE meta SET value = ? WHERE key = 'next_row'", (len(records),))
            self._conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('compacting', 1)")
        self._finish_compaction()
        return dead

    def _finish_compaction(self) -> None:
        tmp = self.path / COMPACTING
        if self._meta("compacting", 0):
            if self._desc_fd is not None:
                os.close(self._desc_fd)
                self._desc_fd = None
            if tmp.exists():
                os.replace(tmp, self.path / DESCRIPTORS)
                fsync_dir(self.path)
            with self._transaction():
                self._conn.execute("DELETE FROM meta WHERE key = 'compacting'")
        elif tmp.exists():  # a compaction that crashed before its commit: the old file is current
            tmp.unlink()


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatabaseError(f"database {display_path(path)}: unreadable {MANIFEST}: {exc}") from None
    if not isinstance(manifest, dict) or "model" not in manifest or "dim" not in manifest:
        raise DatabaseError(f"database {display_path(path)}: {MANIFEST} lacks the model or dim")
    if int(manifest.get("format", 1)) > FORMAT_VERSION:
        raise DatabaseError(
            f"database {display_path(path)} was written by a newer geoloc "
            f"({manifest.get('geoloc_version', '?')}); upgrade geoloc to use it"
        )
    return manifest


def _write_manifest(path: Path, manifest: dict) -> None:
    atomic_write(path / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


def _connect(path: Path, *, write: bool) -> sqlite3.Connection:
    file = path / SQLITE
    try:
        if write:
            conn = sqlite3.connect(file, isolation_level=None, check_same_thread=False)
            _check_schema_version(conn, path)  # before anything is written into a newer file
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
            if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
        else:
            if not file.exists():
                raise DatabaseError(f"database {display_path(path)} is damaged: {SQLITE} is missing")
            uri = "file:" + _uri_path(file) + "?mode=ro"
            try:
                conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
                conn.execute("SELECT COUNT(*) FROM photos").fetchone()
            except sqlite3.OperationalError:
                if os.access(path, os.W_OK):
                    raise
                # A database on read-only media: WAL needs a writable folder for its index
                # file, so read it as an immutable file (no writer can be running there anyway).
                conn = sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None,
                                       check_same_thread=False)
                conn.execute("SELECT COUNT(*) FROM photos").fetchone()
            conn.execute("PRAGMA query_only=1")
            _check_schema_version(conn, path)
        conn.execute("PRAGMA busy_timeout=10000")
        return conn
    except sqlite3.Error as exc:
        raise DatabaseError(f"database {display_path(path)}: cannot open {SQLITE}: {exc}") from None


def _check_schema_version(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a photos.sqlite that a newer geoloc wrote: its rows may mean something else."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > FORMAT_VERSION:
        conn.close()
        raise DatabaseError(
            f"database {display_path(path)}: {SQLITE} was written by a newer geoloc (schema "
            f"{version}, this geoloc reads up to {FORMAT_VERSION}); upgrade geoloc to use it"
        )


def _uri_path(file: Path) -> str:
    from urllib.parse import quote

    return quote(os.fsencode(file.absolute()), safe="/")


def _geoloc_version() -> str:
    from geoloc import __version__

    return __version__
