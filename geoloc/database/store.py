"""The photo database: a folder that survives ``kill -9`` at any moment and tells when it is hurt.

Layout: see :mod:`geoloc.database.layout` and docs/database.md.

Crash safety rests on one ordering rule: descriptor bytes and their ``descriptors.idx`` entries
are written and fsynced *before* the SQLite transaction that references them commits. A crash
therefore leaves, at worst, rows past the committed high-water mark (``meta.next_row``); the
next writer keeps every complete one as a dead row (``--repair`` and later runs take it back
when its photo turns up) and drops only a torn partial row. No code path truncates or deletes a
stored descriptor except compaction of dead rows and an explicit ``--repair``/``--prune``.

Damage is detected, never guessed around: every open checks that the files agree with each
other (row counter, file sizes, the manifest and vocabulary against their copies in SQLite), and
the descriptors are verified against their checksums (all of them up to a few GiB, else the rows
a search returns). What is wrong comes out as one :class:`DatabaseDamagedError` line naming the
file and the repair.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from geoloc.database import rows as rowidx
from geoloc.database.layout import (
    COMPACT_FRACTION,
    COMPACT_MIN_ROWS,
    COMPACTING,
    DAMAGED,
    DATA_FILES,
    DESCRIPTORS,
    FORMAT_VERSION,
    LOCK,
    MANIFEST,
    QUICK_CHECK_BYTES,
    ROWS,
    ROWS_COMPACTING,
    SQLITE,
    VERIFY_ALL_BYTES,
    VOCABULARY,
    repair_hint,
)
from geoloc.database.lock import WriteLock
from geoloc.database.records import COLUMNS, PhotoRecord, path_from_key, path_key, record_from_row
from geoloc.database.sqlite import Connection, connect
from geoloc.errors import DatabaseDamagedError, DatabaseError
from geoloc.files import atomic_write, display_path, fsync_dir

_SELECT = f"SELECT {', '.join(COLUMNS)} FROM photos"


class Database:
    """A geoloc database folder. Readers never block; one writer at a time holds the lock.

    ``notes`` lists damage that does not change any answer (a lost or damaged mirror file whose
    copy in SQLite is intact): readers go on with the copy and can say so; writers refuse until
    ``--repair``, so nothing is ever written on top of damage.
    """

    def __init__(self, path: Path, conn: Connection, write: bool, lock: Optional[WriteLock]):
        self.path = path
        self.write = write
        self._conn = conn
        self._lock = lock
        self._desc_fd: Optional[int] = None
        self._idx_fd: Optional[int] = None
        self.manifest: dict = {}
        self.dim = 0
        self._row_bytes = 0
        self.notes: list[str] = []
        #: What ``repair`` rebuilt while opening (files or counters), for the run's report.
        self.repaired: list[str] = []
        #: Set by a repair that rebuilt photos.sqlite: every stored row is waiting to be claimed.
        self.rebuilt = False

    @property
    def where(self) -> str:
        return f"database {display_path(self.path)}"

    def damage(self, problems: list[str]) -> DatabaseDamagedError:
        return DatabaseDamagedError(self.where, problems, repair_hint(display_path(self.path)))

    # ------------------------------------------------------------------ opening

    @staticmethod
    def exists(path: Path) -> bool:
        """A folder is a database once its manifest or its photos.sqlite exists; a lost manifest
        makes a damaged database, never a folder to create a new one in."""
        path = Path(path)
        return (path / MANIFEST).is_file() or (path / SQLITE).is_file()

    @classmethod
    def open(cls, path: Path, *, write: bool = False, repair: bool = False,
             allow_damage: bool = False) -> "Database":
        """Open for reading, or (``write``) for writing under the lock.

        ``repair`` (writers) rebuilds what it can instead of refusing: a lost or unreadable
        photos.sqlite from the manifest and the row index, lost mirrors from their copies, a lost
        row counter from the files. ``allow_damage`` (``geoloc check``) opens whatever can be
        opened and leaves the verdict to :func:`geoloc.database.integrity.check`.
        """
        path = Path(path).expanduser().absolute()
        if not cls.exists(path):
            raise DatabaseError(f"no geoloc database at {display_path(path)} (run `geoloc index` first)")
        lock = None
        if write:
            lock = WriteLock(path)
            lock.acquire()
        try:
            if repair and write:
                conn = _connect_or_rebuild(path)
            else:
                conn = connect(path, write=write)
            db = cls(path, conn, write, lock)
            try:
                db._load_manifest(repair=repair and write)
                if write:
                    db._recover(repair=repair)
                problems = db.structural_problems()
                if problems and not (allow_damage or repair):  # a repair re-extracts what is missing
                    raise db.damage(problems)
                db.notes = db.mirror_problems()
                if write and db.notes and not repair:
                    raise db.damage(db.notes)
                db.rebuilt = bool(db._meta("rebuilt", 0))
                if db.rebuilt:
                    db.repaired.insert(0, f"{SQLITE} (from {MANIFEST} and {ROWS})")
            except BaseException:
                db._close_files()
                conn.close()
                raise
            return db
        except BaseException:
            if lock is not None:
                lock.release()
            raise

    @classmethod
    def create(cls, path: Path, manifest: dict) -> "Database":
        """Make a new, empty database and hold its write lock.

        Refused in a folder that holds anything but the leftovers of a create that crashed
        before it was done (empty files): a folder with data in it is a damaged database, to
        repair, never to overwrite.
        """
        path = Path(path).expanduser().absolute()
        for key in ("model", "dim"):
            if key not in manifest:
                raise ValueError(f"manifest needs {key!r}")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(f"cannot create database {display_path(path)}: {exc.strerror or exc}") from None
        lock = WriteLock(path)
        lock.acquire()
        try:
            if cls.exists(path):
                lock.release()
                raise DatabaseError(f"a database already exists at {display_path(path)}")
            _refuse_non_empty(path, lock)
            full = {"format": FORMAT_VERSION, "dtype": "float32", "geoloc_version": _geoloc_version(),
                    "created": _now(), "revision": 1, **manifest}
            full["dim"] = int(full["dim"])
            conn = connect(path, write=True, create=True)
            db = cls(path, conn, True, lock)
            db._set_manifest(full)
            with db._transaction():
                for key, value in (("next_row", 0), ("generation", 0)):
                    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('manifest', ?)", (json.dumps(full, sort_keys=True),))
            for name in (DESCRIPTORS, ROWS):
                open(path / name, "ab").close()
            _write_manifest(path, full)
            return db
        except OSError as exc:
            lock.release()
            raise DatabaseError(f"cannot create database {display_path(path)}: {exc.strerror or exc}") from None
        except BaseException:
            lock.release()
            raise

    # ------------------------------------------------------------------ manifest

    def _set_manifest(self, manifest: dict) -> None:
        self.manifest = manifest
        self.dim = int(manifest["dim"])
        self._row_bytes = self.dim * 4

    def _load_manifest(self, repair: bool) -> None:
        """The manifest from photos.sqlite's copy (authoritative), compared with manifest.json.

        A manifest.json one revision behind its copy is an update that was interrupted between
        its two writes: a writer finishes it. Any other difference is damage to a mirror:
        readers carry on with the copy (see ``notes``), writers refuse, ``--repair`` rewrites it.
        """
        text = self._meta("manifest")
        copy = _parse_manifest(text) if text is not None else None
        file, file_problem = _read_manifest_file(self.path)
        self._manifest_behind = False
        self._manifest_problem: Optional[str] = None
        if text is not None and copy is None:  # the copy itself is garbage: the file is all there is
            if file is None:
                raise self.damage([f"{SQLITE}'s copy of the manifest and {MANIFEST} are both unreadable"])
            _check_format(self.path, file)
            self._set_manifest(file)
            if repair:
                with self._transaction():
                    self._conn.execute("UPDATE meta SET value = ? WHERE key = 'manifest'",
                                       (json.dumps(file, sort_keys=True),))
                self.repaired.append(f"{SQLITE}'s copy of the manifest")
            else:
                self._manifest_problem = f"{SQLITE}'s copy of the manifest is unreadable"
            return
        manifest = copy or file
        if manifest is None:
            raise self.damage([file_problem or f"{MANIFEST} is missing"])
        _check_format(self.path, manifest)
        self._set_manifest(manifest)
        if copy is None or file == copy:  # (no copy: a geoloc 0.1.0 database, migrated by writers)
            return
        self._manifest_behind = file is not None and int(file.get("revision", 0)) == int(copy.get("revision", 0)) - 1
        if self._manifest_behind or repair:
            if self.write:
                _write_manifest(self.path, copy)
                if not self._manifest_behind:
                    self.repaired.append(MANIFEST)
        else:
            self._manifest_problem = file_problem or f"{MANIFEST} does not match {SQLITE}'s copy of it"

    def mirror_problems(self) -> list[str]:
        """Damage to the readable mirrors (manifest.json, vocabulary.safetensors) whose copies in
        photos.sqlite are intact: nothing an answer depends on, but nothing to write over."""
        problems = [self._manifest_problem] if self._manifest_problem else []
        blob = self._meta("vocabulary")
        if blob is not None:
            data = self._vocabulary_file_bytes()
            if data is None:
                problems.append(f"{VOCABULARY} is missing ({SQLITE} holds a copy)")
            elif data != bytes(blob):
                problems.append(f"{VOCABULARY} does not match {SQLITE}'s copy of it")
        return problems

    def update_manifest(self, changes: dict) -> None:
        """Change manifest fields: the SQLite copy first (one transaction), then the file."""
        self._require_write()
        manifest = {**self.manifest, **changes, "revision": int(self.manifest.get("revision", 0)) + 1}
        with self._transaction():
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('manifest', ?)",
                               (json.dumps(manifest, sort_keys=True),))
        _write_manifest(self.path, manifest)
        self.manifest = manifest

    # ------------------------------------------------------------------ recovery (writers)

    def _recover(self, repair: bool) -> None:
        """Bring the folder to a consistent state after a crash, losing nothing stored."""
        self._finish_compaction()
        for leftover in self.path.glob(".*.tmp"):  # an atomic write killed half-way
            with contextlib.suppress(OSError):
                leftover.unlink()
        if self._meta("manifest") is None:
            self._migrate_from_v1()
        if repair:
            self._repair_state()
        self._finish_vocabulary_save(repair)
        self._adopt_tail()

    def _migrate_from_v1(self) -> None:
        """A geoloc 0.1.0 database: add the row index and the copies, once, trusting what is stored.

        Its rows past the committed mark are the uncommitted tail 0.1.0 itself truncated; every
        committed row gets its index entry from the photo's recorded hash and the row's bytes.
        """
        n = self.next_row
        desc = self.path / DESCRIPTORS
        size = desc.stat().st_size if desc.exists() else 0
        if size < n * self._row_bytes:
            raise self.damage([f"{DESCRIPTORS} is shorter than {SQLITE} says ({size} < {n * self._row_bytes} bytes)"])
        sha = {int(row): s for row, s in self._conn.fetch_all("SELECT row, sha256 FROM photos")}
        fd = self._descriptor_fd()
        os.ftruncate(fd, n * self._row_bytes)
        matrix = np.memmap(desc, dtype=np.float32, mode="r", shape=(n, self.dim)) if n else None
        with open(self.path / ROWS, "wb") as fh:
            for start in range(0, n, 4096):
                part = np.ascontiguousarray(matrix[start:start + 4096])
                fh.write(rowidx.entries([sha.get(r) for r in range(start, start + len(part))],
                                        part.tobytes(), self._row_bytes))
            fh.flush()
            os.fsync(fh.fileno())
        del matrix
        state = self._vocabulary_from_file()
        with self._transaction():
            if state is not None:
                self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('vocabulary', ?)", (state,))
            manifest = {**self.manifest, "format": FORMAT_VERSION, "revision": 1}
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('manifest', ?)",
                               (json.dumps(manifest, sort_keys=True),))
            self._conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
        _write_manifest(self.path, manifest)
        self._set_manifest(manifest)

    def _repair_state(self) -> None:
        """``--repair``: rebuild a lost row counter, row index or mirror from what survives."""
        if self._meta("generation") is None:
            with self._transaction():
                self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('generation', 0)")
        if self._meta("next_row") is None:
            top = self._conn.fetch_one("SELECT MAX(row) FROM photos")[0]
            rows = max(self._physical_rows(), -1 if top is None else int(top) + 1)
            with self._transaction():
                self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('next_row', ?)", (rows,))
            self.repaired.append(f"{SQLITE}'s row counter")
        if not (self.path / ROWS).exists():
            self._rebuild_row_index()
            self.repaired.append(f"{ROWS} (from the rows as they are)")
        if self._meta("vocabulary") is not None:
            blob = bytes(self._meta("vocabulary"))
            if self._vocabulary_file_bytes() != blob:
                atomic_write(self.path / VOCABULARY, blob)
                self.repaired.append(VOCABULARY)
        elif (self.path / VOCABULARY).exists():
            state = self._vocabulary_from_file()
            if state is not None:
                with self._transaction():
                    self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('vocabulary', ?)", (state,))

    def _rebuild_row_index(self) -> None:
        """A lost ``descriptors.idx``: entries from the recorded photo hashes and the rows as they
        are now (they can no longer be verified against what was written)."""
        n = min(self.next_row, self._descriptor_rows())
        sha = {int(row): s for row, s in self._conn.fetch_all("SELECT row, sha256 FROM photos")}
        matrix = np.memmap(self.path / DESCRIPTORS, dtype=np.float32, mode="r", shape=(n, self.dim)) if n else None
        with open(self.path / ROWS, "wb") as fh:
            for start in range(0, n, 4096):
                part = np.ascontiguousarray(matrix[start:start + 4096])
                fh.write(rowidx.entries([sha.get(r) for r in range(start, start + len(part))],
                                        part.tobytes(), self._row_bytes))
            fh.flush()
            os.fsync(fh.fileno())

    def _adopt_tail(self) -> None:
        """Rows past the committed mark are kept as dead rows (an interrupted batch, or commits
        lost with photos.sqlite-wal: their photos take them back by content hash). Only a torn
        partial row, or a row without its index entry (never committed), is cut off."""
        complete = min(self._descriptor_rows(), self._index_rows())
        n = self.next_row
        if complete < n:
            return  # damage: reported by structural_problems
        for name, unit in ((DESCRIPTORS, self._row_bytes), (ROWS, rowidx.ENTRY)):
            file = self.path / name
            if file.stat().st_size != complete * unit:
                fd = self._descriptor_fd() if name == DESCRIPTORS else self._index_fd()
                os.ftruncate(fd, complete * unit)
                os.fsync(fd)
        if complete > n:
            with self._transaction():
                self._conn.execute("UPDATE meta SET value = ? WHERE key = 'next_row'", (complete,))

    # ------------------------------------------------------------------ what every open checks

    def structural_problems(self) -> list[str]:
        """What is wrong without reading the descriptors: the files' sizes and counters agree,
        SQLite's own structure is sound (checked for files up to 64 MiB)."""
        problems: list[str] = []
        for key in ("next_row", "generation"):
            value = self._meta(key)
            if value is None or not str(value).lstrip("-").isdigit():
                problems.append(f"{SQLITE} lacks its {key.replace('_', ' ')} counter")
        if problems:
            return problems
        sqlite_file = self.path / SQLITE
        if sqlite_file.exists() and sqlite_file.stat().st_size <= QUICK_CHECK_BYTES:
            verdict = self._conn.fetch_one("PRAGMA quick_check(1)")[0]
            if verdict != "ok":
                problems.append(f"{SQLITE} is damaged ({verdict})")
                return problems
        n = self.next_row
        have = self._descriptor_rows(readers_path=True)
        if have < n:
            problems.append(f"{DESCRIPTORS} holds {have} of the {n} rows {SQLITE} counts")
        if self._meta("manifest") is not None:  # format 2: the row index is part of the database
            if not (self.path / ROWS).exists():
                problems.append(f"{ROWS} is missing")
            elif self._index_rows(readers_path=True) < n:
                problems.append(f"{ROWS} holds {self._index_rows(readers_path=True)} of the {n} entries {SQLITE} counts")
        top = self._conn.fetch_one("SELECT MAX(row), MIN(row) FROM photos")
        if top[0] is not None and (int(top[0]) >= n or int(top[1]) < 0):
            problems.append(f"{SQLITE} refers to descriptor rows beyond its own counter ({int(top[0])} ≥ {n})")
        problems.extend(self._vocabulary_problems())
        return problems

    def verify(self, records: list[PhotoRecord] | None = None, *, budget: int = VERIFY_ALL_BYTES) -> list[str]:
        """Check stored descriptors against their checksums and photo hashes; the problems.

        All referenced rows when they fit ``budget`` bytes (else none: the caller verifies the
        rows it is about to use with :meth:`damaged_rows`).
        """
        if self._meta("manifest") is None:  # geoloc 0.1.0 stored no checksums
            return []
        records = self.photos() if records is None else records
        if len(records) * self._row_bytes > budget:
            return []
        bad = self.damaged_rows(records)
        if not bad:
            return []
        names = [display_path(r.path) for r in records if r.row in bad]
        first = ", ".join(names[:2]) + (" …" if len(names) > 2 else "")
        return [f"{DESCRIPTORS}: {len(bad)} stored descriptor{'s' if len(bad) > 1 else ''} no longer match "
                f"{'their' if len(bad) > 1 else 'its'} checksum ({first})"]

    def damaged_rows(self, records: Iterable[PhotoRecord]) -> set[int]:
        """Rows of ``records`` whose descriptor bytes, index entry or photo hash disagree."""
        records = [r for r in records if r.row >= 0]
        if not records or self._meta("manifest") is None:
            return set()
        records.sort(key=lambda r: r.row)
        bad: set[int] = set()
        desc_path, idx_path = self._descriptor_path(), self._index_path()
        if not (desc_path.is_file() and idx_path.is_file()):
            return {r.row for r in records}
        n = self.next_row
        with open(desc_path, "rb") as desc, open(idx_path, "rb") as idx:
            for r in records:
                if r.row >= n:
                    bad.add(r.row)
                    continue
                desc.seek(r.row * self._row_bytes)
                row = desc.read(self._row_bytes)
                idx.seek(r.row * rowidx.ENTRY)
                parsed = rowidx.parse(idx.read(rowidx.ENTRY))
                if (len(row) != self._row_bytes or parsed is None or parsed[1] != rowidx.row_crc(row)
                        or (r.sha256 and rowidx.hex_of(parsed[0]) not in (None, r.sha256))):
                    bad.add(r.row)
        return bad

    # ------------------------------------------------------------------ files

    def _descriptor_path(self) -> Path:
        """Readers follow a compaction that committed but has not been renamed into place yet."""
        if self._meta("compacting", 0) and (self.path / COMPACTING).exists():
            return self.path / COMPACTING
        return self.path / DESCRIPTORS

    def _index_path(self) -> Path:
        if self._meta("compacting", 0) and (self.path / ROWS_COMPACTING).exists():
            return self.path / ROWS_COMPACTING
        return self.path / ROWS

    def _descriptor_rows(self, readers_path: bool = False) -> int:
        file = self._descriptor_path() if readers_path else self.path / DESCRIPTORS
        return file.stat().st_size // self._row_bytes if file.exists() and self._row_bytes else 0

    def _index_rows(self, readers_path: bool = False) -> int:
        file = self._index_path() if readers_path else self.path / ROWS
        return file.stat().st_size // rowidx.ENTRY if file.exists() else 0

    def _physical_rows(self) -> int:
        return min(self._descriptor_rows(), self._index_rows()) if (self.path / ROWS).exists() else self._descriptor_rows()

    def _descriptor_fd(self) -> int:
        if self._desc_fd is None:
            self._desc_fd = os.open(self.path / DESCRIPTORS, os.O_RDWR | os.O_CREAT, 0o644)
        return self._desc_fd

    def _index_fd(self) -> int:
        if self._idx_fd is None:
            self._idx_fd = os.open(self.path / ROWS, os.O_RDWR | os.O_CREAT, 0o644)
        return self._idx_fd

    # ------------------------------------------------------------------ context, closing

    def _close_files(self) -> None:
        for name in ("_desc_fd", "_idx_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)

    def close(self) -> None:
        self._close_files()
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
        row = self._conn.fetch_one("SELECT value FROM meta WHERE key = ?", (key,))
        return default if row is None else row[0]

    @property
    def next_row(self) -> int:
        """Rows allocated so far (live + dead); the committed high-water mark."""
        return int(self._meta("next_row", 0))

    def photos(self, located_only: bool = False) -> list[PhotoRecord]:
        sql = _SELECT + (" WHERE lat IS NOT NULL AND lon IS NOT NULL" if located_only else "")
        return [record_from_row(r) for r in self._conn.fetch_all(sql + " ORDER BY row")]

    def iter_photos(self) -> Iterator[PhotoRecord]:
        """Like ``photos()`` without holding them all in memory at once."""
        for r in self._conn.iterate(_SELECT + " ORDER BY row"):
            yield record_from_row(r)

    def file_stats(self) -> Iterator[tuple[str, int, int, Optional[str]]]:
        """``(path, size, mtime_ns, sha256)`` of every photo: all a re-run needs to tell which
        files changed, without building a full record per photo of a large archive."""
        for key, size, mtime_ns, sha256 in self._conn.iterate("SELECT path, size, mtime_ns, sha256 FROM photos"):
            yield os.fspath(path_from_key(key)), size, mtime_ns, sha256

    def get(self, path: Path) -> Optional[PhotoRecord]:
        row = self._conn.fetch_one(_SELECT + " WHERE path = ?", (path_key(path),))
        return None if row is None else record_from_row(row)

    def counts(self) -> dict[str, int]:
        total, located = self._conn.fetch_one(
            "SELECT COUNT(*), COUNT(CASE WHEN lat IS NOT NULL AND lon IS NOT NULL THEN 1 END) FROM photos")
        return {"total": total, "located": located, "unlocated": total - located}

    def __len__(self) -> int:
        return self._conn.fetch_one("SELECT COUNT(*) FROM photos")[0]

    @property
    def dead_rows(self) -> int:
        """Descriptor rows no photo references (replaced or removed photos, interrupted batches)."""
        return self.next_row - len(self)

    def adoptable_rows(self) -> dict[str, int]:
        """``{photo sha256: row}`` of dead rows whose descriptor is intact: a photo with that
        content takes its row back instead of going through the network again (after a lost
        WAL or photos.sqlite, or a photo moved to another folder)."""
        if self._meta("manifest") is None or self.dead_rows <= 0:
            return {}
        if not ((self.path / DESCRIPTORS).is_file() and (self.path / ROWS).is_file()):
            return {}
        live = {int(r) for (r,) in self._conn.fetch_all("SELECT row FROM photos")}
        found: dict[str, int] = {}
        with open(self.path / DESCRIPTORS, "rb") as desc, open(self.path / ROWS, "rb") as idx:
            for row in range(self.next_row):
                if row in live:
                    continue
                idx.seek(row * rowidx.ENTRY)
                parsed = rowidx.parse(idx.read(rowidx.ENTRY))
                if parsed is None or rowidx.hex_of(parsed[0]) is None:
                    continue
                desc.seek(row * self._row_bytes)
                if rowidx.row_crc(desc.read(self._row_bytes)) == parsed[1]:
                    found[rowidx.hex_of(parsed[0])] = row  # the latest row of a content wins
        return found

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
        raise DatabaseError(f"{self.where} keeps changing; try again")  # pragma: no cover

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
        keys = [path_key(r.path) for r in records]

        def rows() -> list[int | None]:
            found = {}
            for chunk in range(0, len(keys), 500):
                part = keys[chunk:chunk + 500]
                marks = ",".join("?" * len(part))
                found.update(self._conn.fetch_all(f"SELECT path, row FROM photos WHERE path IN ({marks})", part))
            return [found.get(k) for k in keys]

        current, next_row, path = self._snapshot(rows)
        missing = [r.path for r, row in zip(records, current) if row is None]
        if missing:
            raise DatabaseError(f"{self.where}: {display_path(missing[0])} was removed while it was being read; try again")
        matrix = np.memmap(path, dtype=np.float32, mode="r", shape=(next_row, self.dim))
        return np.ascontiguousarray(matrix[current])

    # ------------------------------------------------------------------ vocabulary

    def has_vocabulary(self) -> bool:
        return self._meta("vocabulary") is not None or (self.path / VOCABULARY).is_file()

    def load_vocabulary(self) -> Optional[dict]:
        """The fitted vocabulary, from its copy in photos.sqlite (the file is its mirror)."""
        from safetensors.torch import load

        blob = self._meta("vocabulary")
        if blob is None:
            blob = self._vocabulary_file_bytes()
        if blob is None:
            return None
        try:
            return load(bytes(blob))
        except Exception as exc:
            raise self.damage([f"the vocabulary cannot be read ({exc})"]) from None

    def save_vocabulary(self, state: dict, manifest_changes: Optional[dict] = None) -> None:
        """Store a fitted vocabulary and the manifest's record of it in one SQLite transaction,
        then the two mirror files (a writer finishes them if a crash comes in between)."""
        self._require_write()
        from safetensors.torch import save

        data = save({k: v.detach().cpu().contiguous() for k, v in state.items()})
        manifest = {**self.manifest, **(manifest_changes or {}),
                    "vocabulary_file_sha256": hashlib.sha256(data).hexdigest(),
                    "revision": int(self.manifest.get("revision", 0)) + 1}
        with self._transaction():
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('vocabulary', ?)", (data,))
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('manifest', ?)",
                               (json.dumps(manifest, sort_keys=True),))
        atomic_write(self.path / VOCABULARY, data)
        _write_manifest(self.path, manifest)
        self.manifest = manifest

    def _vocabulary_file_bytes(self) -> Optional[bytes]:
        try:
            return (self.path / VOCABULARY).read_bytes()
        except OSError:
            return None

    def _vocabulary_from_file(self) -> Optional[bytes]:
        """The mirror file's bytes when they match what the manifest recorded of them."""
        data = self._vocabulary_file_bytes()
        if data is None:
            return None
        recorded = self.manifest.get("vocabulary_file_sha256")
        if recorded and hashlib.sha256(data).hexdigest() != recorded:
            return None
        return data

    def _vocabulary_problems(self) -> list[str]:
        """A vocabulary the manifest says was fitted, with neither its copy nor its file."""
        if self.manifest.get("vocabulary_sha256") and self._meta("vocabulary") is None \
                and not (self.path / VOCABULARY).exists():
            return [f"the fitted vocabulary is lost ({SQLITE} has no copy and {VOCABULARY} is missing)"]
        return []

    def _finish_vocabulary_save(self, repair: bool) -> None:
        """A save killed after its SQLite transaction: the mirror file is written now."""
        blob = self._meta("vocabulary")
        if blob is not None and (repair or self._manifest_behind) and self._vocabulary_file_bytes() != bytes(blob):
            atomic_write(self.path / VOCABULARY, bytes(blob))

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
        self._conn.execute(begin)
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                self._conn.raw.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _require_write(self) -> None:
        if not self.write:
            raise DatabaseError(f"{self.where} was opened read-only")

    def _checkpoint(self) -> None:
        """Move committed pages into the main file now: a lost WAL then costs nothing committed."""
        with contextlib.suppress(DatabaseError):
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _append(self, descriptors: np.ndarray, sha256s: list[Optional[str]]) -> int:
        """Write rows and their index entries at the end, durably; the first new row."""
        start = self.next_row
        data = memoryview(np.ascontiguousarray(descriptors, dtype=np.float32)).cast("B")
        entries = rowidx.entries(sha256s, data, self._row_bytes)
        for fd, payload, offset, name in ((self._descriptor_fd(), data, start * self._row_bytes, DESCRIPTORS),
                                          (self._index_fd(), entries, start * rowidx.ENTRY, ROWS)):
            try:
                os.ftruncate(fd, offset)  # a torn row of a failed earlier attempt, never a stored one
                written = 0
                while written < len(payload):
                    written += os.pwrite(fd, payload[written:], offset + written)
                os.fsync(fd)
            except OSError as exc:
                raise DatabaseError(
                    f"cannot write {self.where}: {name}: {exc.strerror or exc}; free some space and run "
                    "again (what is stored is kept)"
                ) from None
        return start

    def add_batch(self, records: list[PhotoRecord], descriptors: np.ndarray) -> None:
        """Store photos and their descriptors in one transaction (all or nothing).

        A photo already in the database is replaced; its old descriptor row becomes dead.
        """
        self._require_write()
        if not records:
            return
        descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
        if descriptors.shape != (len(records), self.dim):
            raise ValueError(f"descriptors have shape {descriptors.shape}, expected ({len(records)}, {self.dim})")
        keys = [path_key(r.path) for r in records]
        if len(set(keys)) != len(keys):
            raise ValueError("a batch lists the same photo twice")
        start = self._append(descriptors, [r.sha256 for r in records])
        for i, record in enumerate(records):
            record.row = start + i
        self._insert(records, keys, next_row=start + len(records))

    def adopt(self, records: list[PhotoRecord]) -> None:
        """Store photos whose descriptors are already in the file: each record's ``row`` is a
        dead row holding its content's descriptor (see :meth:`adoptable_rows`)."""
        self._require_write()
        if records:
            self._insert(records, [path_key(r.path) for r in records], next_row=None)

    def _insert(self, records: list[PhotoRecord], keys: list, next_row: Optional[int]) -> None:
        now = _now()
        rows = [(key, r.size, r.mtime_ns, r.sha256, r.lat, r.lon, r.alt, r.taken_at, r.gps_accuracy_m,
                 r.width, r.height, r.row, now) for r, key in zip(records, keys)]
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
            if next_row is not None:
                self._conn.execute("UPDATE meta SET value = ? WHERE key = 'next_row'", (next_row,))
        self._checkpoint()

    def update_file_stats(self, changes: Iterable[tuple[Path, int, int]]) -> int:
        """Record a new size/mtime for photos whose content hash proved them unchanged."""
        self._require_write()
        with self._transaction():
            cur = self._conn.executemany(
                "UPDATE photos SET size = ?, mtime_ns = ? WHERE path = ?",
                [(size, mtime_ns, path_key(p)) for p, size, mtime_ns in changes],
            )
        return cur.rowcount

    def remove(self, paths: Iterable[Path]) -> int:
        self._require_write()
        with self._transaction():
            cur = self._conn.executemany("DELETE FROM photos WHERE path = ?", [(path_key(p),) for p in paths])
        return max(cur.rowcount, 0)

    def finish_repair(self) -> None:
        """A repair is over: rows nobody claimed stay as dead rows, and the flag goes."""
        with self._transaction():
            self._conn.execute("DELETE FROM meta WHERE key = 'rebuilt'")
        self.rebuilt = False

    # ------------------------------------------------------------------ compaction

    def needs_compaction(self) -> bool:
        dead = self.dead_rows
        return dead >= COMPACT_MIN_ROWS and dead > COMPACT_FRACTION * max(self.next_row, 1)

    def compact(self) -> int:
        """Rewrite descriptors.f32 and descriptors.idx without dead rows; rows dropped.

        Crash-safe in three steps: write both ``.compact`` files and fsync them; commit the new
        row numbers together with ``compacting=1``; rename the new files into place and clear
        the flag. A crash after the commit is finished by the next writer
        (``_finish_compaction``), and readers in between read the ``.compact`` files.
        """
        self._require_write()
        dead = self.dead_rows
        if dead == 0:
            return 0
        records = self.photos()
        n = self.next_row
        old = np.memmap(self.path / DESCRIPTORS, dtype=np.float32, mode="r", shape=(n, self.dim)) if n else None
        old_idx = np.memmap(self.path / ROWS, dtype=np.uint8, mode="r", shape=(n, rowidx.ENTRY)) if n else None
        for target, source in ((COMPACTING, old), (ROWS_COMPACTING, old_idx)):
            with open(self.path / target, "wb") as fh:
                for i in range(0, len(records), 4096):
                    rows = [r.row for r in records[i:i + 4096]]
                    fh.write(np.ascontiguousarray(source[rows]).tobytes())  # type: ignore[index]
                fh.flush()
                os.fsync(fh.fileno())
        del old, old_idx
        with self._transaction():
            # Records are in increasing old-row order and new rows never exceed old ones, so
            # updating in this order never collides with the UNIQUE constraint.
            self._conn.executemany("UPDATE photos SET row = ? WHERE path = ?",
                                   [(i, path_key(r.path)) for i, r in enumerate(records)])
            self._conn.execute("UPDATE meta SET value = ? WHERE key = 'next_row'", (len(records),))
            self._conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('compacting', 1)")
        self._finish_compaction()
        return dead

    def _finish_compaction(self) -> None:
        pairs = ((COMPACTING, DESCRIPTORS), (ROWS_COMPACTING, ROWS))
        if self._meta("compacting", 0):
            self._close_files()
            for tmp, final in pairs:
                if (self.path / tmp).exists():
                    os.replace(self.path / tmp, self.path / final)
            fsync_dir(self.path)
            with self._transaction():
                self._conn.execute("DELETE FROM meta WHERE key = 'compacting'")
        else:  # a compaction that crashed before its commit: the old files are current
            for tmp, _ in pairs:
                (self.path / tmp).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Helpers


def _connect_or_rebuild(path: Path) -> Connection:
    """``--repair``'s first step: the SQLite file, or a new one when it is lost or unreadable.

    An unreadable file (and its WAL) is moved into ``damaged/`` rather than deleted; the new
    file starts from the manifest, with every stored row waiting for its photo to claim it.
    """
    from geoloc.errors import DatabaseDamagedError

    try:
        conn = connect(path, write=True)
        conn.fetch_one("SELECT COUNT(*) FROM photos")
        if conn.fetch_one("PRAGMA quick_check(1)")[0] == "ok":
            return conn
        conn.close()
    except DatabaseDamagedError:
        pass
    manifest, problem = _read_manifest_file(path)
    if manifest is None:
        raise DatabaseDamagedError(
            f"database {display_path(path)}", [f"{SQLITE} and {MANIFEST} are both lost or unreadable"],
            "nothing says which model made its descriptors; index the photos into a new --db")
    aside = path / DAMAGED / time.strftime("%Y%m%d-%H%M%S")
    for name in (SQLITE, SQLITE + "-wal", SQLITE + "-shm", SQLITE + "-journal"):
        if (path / name).exists():
            aside.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path / name), str(aside / name))
    conn = connect(path, write=True, create=True)
    dim = int(manifest["dim"])
    rows = _complete_rows(path, dim)
    manifest = {**manifest, "format": FORMAT_VERSION, "revision": int(manifest.get("revision", 0)) + 1}
    conn.execute("BEGIN IMMEDIATE")
    for key, value in (("next_row", rows), ("generation", 0), ("rebuilt", 1),
                       ("manifest", json.dumps(manifest, sort_keys=True))):
        conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
    conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
    conn.execute("COMMIT")
    return conn


def _complete_rows(path: Path, dim: int) -> int:
    desc = path / DESCRIPTORS
    rows = desc.stat().st_size // (dim * 4) if desc.exists() else 0
    idx = path / ROWS
    if idx.exists():
        rows = min(rows, idx.stat().st_size // rowidx.ENTRY)
    return rows


def _refuse_non_empty(path: Path, lock: WriteLock) -> None:
    """A new database only in an empty folder, or over the empty leftovers of a crashed create."""
    def release() -> None:
        lock.release()
        (path / LOCK).unlink(missing_ok=True)  # leave the folder as it was

    names = [p.name for p in path.iterdir() if p.name != LOCK and not p.name.endswith(".tmp")]
    foreign = sorted(n for n in names if n not in DATA_FILES)
    if foreign:  # e.g. --db pointing at a photo folder by mistake
        release()
        raise DatabaseError(
            f"cannot create database {display_path(path)}: the folder is not empty and not a geoloc "
            f"database (it holds {display_path(foreign[0])}{' and more' if len(foreign) > 1 else ''}); "
            "choose a new or empty folder"
        )
    holding = [n for n in names if _holds_data(path / n)]
    if holding:
        release()
        raise DatabaseDamagedError(
            f"database {display_path(path)}", [f"{MANIFEST} is missing but {holding[0]} holds data"],
            repair_hint(display_path(path)))
    for name in names:  # a create that crashed before it was done: nothing in these files
        (path / name).unlink(missing_ok=True)


def _holds_data(file: Path) -> bool:
    try:
        if file.stat().st_size == 0:
            return False
    except OSError:
        return False
    if file.name != SQLITE:
        return True
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{file}?mode=ro", uri=True)
        try:
            return conn.execute("SELECT COUNT(*) FROM photos").fetchone()[0] > 0
        finally:
            conn.close()
    except sqlite3.Error:
        return True


def _parse_manifest(text: str) -> Optional[dict]:
    try:
        manifest = json.loads(text)
    except (TypeError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and "model" in manifest and "dim" in manifest else None


def _read_manifest_file(path: Path) -> tuple[Optional[dict], Optional[str]]:
    try:
        text = (path / MANIFEST).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, f"{MANIFEST} is missing"
    except UnicodeDecodeError:
        return None, f"{MANIFEST} is damaged (not a manifest)"
    except OSError as exc:
        return None, f"{MANIFEST} is unreadable ({exc.strerror or exc})"
    manifest = _parse_manifest(text)
    return manifest, (None if manifest is not None else f"{MANIFEST} is damaged (not a manifest)")


def _check_format(path: Path, manifest: dict) -> None:
    if int(manifest.get("format", 1)) > FORMAT_VERSION:
        raise DatabaseError(
            f"database {display_path(path)} was written by a newer geoloc "
            f"({manifest.get('geoloc_version', '?')}); upgrade geoloc to use it"
        )


def _write_manifest(path: Path, manifest: dict) -> None:
    atomic_write(path / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _geoloc_version() -> str:
    from geoloc import __version__

    return __version__


__all__ = ["Database"]
