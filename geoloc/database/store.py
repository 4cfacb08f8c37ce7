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
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from geoloc.database import rows as rowidx
from geoloc.database.layout import (
    COMPACTING,
    DESCRIPTORS,
    MANIFEST,
    MAPS,
    MAPS_COMPACTING,
    ROWS,
    ROWS_COMPACTING,
    SQLITE,
    VERIFY_ALL_BYTES,
    repair_hint,
)
from geoloc.database import integrity, opening, snapshot, vocabulary, writing
from geoloc.database.compaction import compact, needs_compaction
from geoloc.database.lock import WriteLock, lock_holder
from geoloc.database.swap import settle
from geoloc.database.manifest import write_manifest
from geoloc.database.maps import MapSpec
from geoloc.database.records import ALL_COLUMNS, PhotoRecord, path_from_key, path_key, record_from_row
from geoloc.database.sqlite import Connection, photo_columns
from geoloc.errors import DatabaseDamagedError, DatabaseError
from geoloc.files import display_path


class Database:
    """A geoloc database folder. Readers never block; one writer at a time holds the lock.

    ``notes`` lists damage that does not change any answer (a lost or damaged mirror file whose
    copy in SQLite is intact): readers go on with the copy and can say so; writers refuse until
    ``--repair``, so nothing is ever written on top of damage.
    """

    def __init__(self, path: Path, conn: Connection, write: bool, lock: Optional[WriteLock]):
        self.path = path
        self.write = write
        self.conn = conn
        self._lock = lock
        self._desc_fd: Optional[int] = None
        self._idx_fd: Optional[int] = None
        self._maps_fd: Optional[int] = None
        #: How verification maps are stored (``maps.i8``), or None for a database without them.
        self.maps: Optional[MapSpec] = None
        self.manifest: dict = {}
        self.dim = 0
        self.row_bytes = 0
        self.notes: list[str] = []
        #: What ``repair`` rebuilt while opening (files or counters), for the run's report.
        self.repaired: list[str] = []
        #: manifest.json one revision behind its SQLite copy: an update cut between its two
        #: writes, which a writer finishes (and which the vocabulary's mirror may share).
        self.manifest_behind = False
        #: What is wrong with manifest.json beside its intact copy (a reader goes on), or None.
        self.manifest_problem: Optional[str] = None
        #: Set by a repair that rebuilt photos.sqlite: every stored row is waiting to be claimed.
        self.rebuilt = False
        #: The columns of ``photos`` read into records: a database written by an older geoloc
        #: may lack the added ones until its next writer adds them.
        self.columns: tuple[str, ...] = ALL_COLUMNS
        #: The folder this object opened: a vocabulary refit may put another in its place while a
        #: reader holds it, and the files read by name must then not be mixed with this one's rows.
        self.folder_identity = snapshot.identity(path)

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
        settle(path)  # a vocabulary refit cut between its two renames
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
        return opening.open_database(cls, path, write=write, repair=repair, allow_damage=allow_damage)

    @classmethod
    def create(cls, path: Path, manifest: dict) -> "Database":
        """Make a new, empty database and hold its write lock.

        Refused in a folder that holds anything but the leftovers of a create that crashed
        before it was done (empty files): a folder with data in it is a damaged database, to
        repair, never to overwrite.
        """
        return opening.create_database(cls, path, manifest)

    def read_columns(self) -> None:
        """Read records with the columns this file has: a database an older geoloc made lacks
        ``gps_source`` and ``sidecar_key`` until a writer adds them (readers never do)."""
        have = photo_columns(self.conn)
        if "path" not in have:  # no photos table at all: damage, which the checks report
            return
        self.columns = tuple(c for c in ALL_COLUMNS if c in have)
        self._select = f"SELECT {', '.join(self.columns)} FROM photos"

    _select = f"SELECT {', '.join(ALL_COLUMNS)} FROM photos"

    def _record(self, row: tuple) -> PhotoRecord:
        return record_from_row(row, self.columns)

    # ------------------------------------------------------------------ manifest

    def set_manifest(self, manifest: dict) -> None:
        self.manifest = manifest
        self.dim = int(manifest["dim"])
        self.row_bytes = self.dim * 4
        self.maps = MapSpec.from_manifest(manifest)

    def mirror_problems(self) -> list[str]:
        """Damage to the readable mirrors (manifest.json, vocabulary.safetensors) whose copies in
        photos.sqlite are intact: nothing an answer depends on, but nothing to write over."""
        return [p for p in (self.manifest_problem, vocabulary.mirror_problem(self)) if p]

    def update_manifest(self, changes: dict) -> None:
        """Change manifest fields: the SQLite copy first (one transaction), then the file."""
        self.require_write()
        manifest = {**self.manifest, **changes, "revision": int(self.manifest.get("revision", 0)) + 1}
        with self.transaction():
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('manifest', ?)",
                               (json.dumps(manifest, sort_keys=True),))
        write_manifest(self.path, manifest)
        self.manifest = manifest

    # ------------------------------------------------------------------ what every open checks

    def structural_problems(self) -> list[str]:
        """What is wrong without reading the descriptors (see :mod:`geoloc.database.integrity`)."""
        return integrity.structural_problems(self)

    def verify(self, records: list[PhotoRecord] | None = None, *, budget: int = VERIFY_ALL_BYTES) -> list[str]:
        """Stored descriptors against their checksums and photo hashes; the problems found."""
        return integrity.verify(self, records, budget=budget)

    def damaged_rows(self, records: Iterable[PhotoRecord]) -> set[int]:
        """Rows of ``records`` whose descriptor bytes, index entry or photo hash disagree."""
        return integrity.damaged_rows(self, records)

    def adoptable_rows(self) -> dict[str, int]:
        """``{photo sha256: row}`` of dead rows with an intact descriptor, for photos of that content."""
        return integrity.adoptable_rows(self)

    # ------------------------------------------------------------------ files

    def descriptor_path(self) -> Path:
        """Readers follow a compaction that committed but has not been renamed into place yet."""
        if self.meta("compacting", 0) and (self.path / COMPACTING).exists():
            return self.path / COMPACTING
        return self.path / DESCRIPTORS

    def index_path(self) -> Path:
        if self.meta("compacting", 0) and (self.path / ROWS_COMPACTING).exists():
            return self.path / ROWS_COMPACTING
        return self.path / ROWS

    def descriptor_rows(self, readers_path: bool = False) -> int:
        file = self.descriptor_path() if readers_path else self.path / DESCRIPTORS
        return file.stat().st_size // self.row_bytes if file.exists() and self.row_bytes else 0

    def maps_path(self) -> Path:
        if self.meta("compacting", 0) and (self.path / MAPS_COMPACTING).exists():
            return self.path / MAPS_COMPACTING
        return self.path / MAPS

    def map_rows(self, readers_path: bool = False) -> int:
        file = self.maps_path() if readers_path else self.path / MAPS
        return file.stat().st_size // self.maps.slot_bytes if self.maps and file.exists() else 0

    def index_rows(self, readers_path: bool = False) -> int:
        file = self.index_path() if readers_path else self.path / ROWS
        return file.stat().st_size // rowidx.ENTRY if file.exists() else 0

    def physical_rows(self) -> int:
        rows = min(self.descriptor_rows(), self.index_rows()) if (self.path / ROWS).exists() else self.descriptor_rows()
        return min(rows, self.map_rows()) if self.maps else rows

    def descriptor_fd(self) -> int:
        if self._desc_fd is None:
            self._desc_fd = os.open(self.path / DESCRIPTORS, os.O_RDWR | os.O_CREAT, 0o644)
        return self._desc_fd

    def maps_fd(self) -> int:
        if self._maps_fd is None:
            self._maps_fd = os.open(self.path / MAPS, os.O_RDWR | os.O_CREAT, 0o644)
        return self._maps_fd

    def index_fd(self) -> int:
        if self._idx_fd is None:
            self._idx_fd = os.open(self.path / ROWS, os.O_RDWR | os.O_CREAT, 0o644)
        return self._idx_fd

    # ------------------------------------------------------------------ context, closing

    def close_files(self) -> None:
        for name in ("_desc_fd", "_idx_fd", "_maps_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)

    def close(self) -> None:
        self.close_files()
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None  # type: ignore[assignment]
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def close_keeping_lock(self) -> Optional[WriteLock]:
        """Close everything but the write lock, and hand the lock to the caller: the folder can
        then be renamed away (:mod:`geoloc.database.swap`) without SQLite deleting files by
        their old path in the folder that takes its place, and with no other writer starting on
        it meanwhile."""
        lock, self._lock = self._lock, None
        self.close()
        return lock

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

    def meta(self, key: str, default: Any = None) -> Any:
        row = self.conn.fetch_one("SELECT value FROM meta WHERE key = ?", (key,))
        return default if row is None else row[0]

    @property
    def next_row(self) -> int:
        """Rows allocated so far (live + dead); the committed high-water mark."""
        return int(self.meta("next_row", 0))

    def photos(self, located_only: bool = False) -> list[PhotoRecord]:
        sql = self._select + (" WHERE lat IS NOT NULL AND lon IS NOT NULL" if located_only else "")
        return [self._record(r) for r in self.conn.fetch_all(sql + " ORDER BY row")]

    def iter_photos(self) -> Iterator[PhotoRecord]:
        """Like ``photos()`` without holding them all in memory at once."""
        for r in self.conn.iterate(self._select + " ORDER BY row"):
            yield self._record(r)

    def file_stats(self) -> Iterator[tuple[str, int, int, Optional[str]]]:
        """``(path, size, mtime_ns, sha256)`` of every photo: all a re-run needs to tell which
        files changed, without building a full record per photo of a large archive."""
        for key, size, mtime_ns, sha256 in self.conn.iterate("SELECT path, size, mtime_ns, sha256 FROM photos"):
            yield os.fspath(path_from_key(key)), size, mtime_ns, sha256

    def sidecar_keys(self) -> Iterator[tuple[str, Optional[str]]]:
        """``(path, sidecar_key)`` of every photo whose position a sidecar could give or take:
        those without one, and those whose position came from a sidecar. (A photo located by
        its own EXIF keeps it whatever its sidecars say.)"""
        if "sidecar_key" not in self.columns:
            sql = "SELECT path, NULL FROM photos WHERE lat IS NULL OR lon IS NULL"
        else:
            sql = ("SELECT path, sidecar_key FROM photos WHERE lat IS NULL OR lon IS NULL "
                   "OR gps_source IN ('xmp', 'takeout')")
        for key, sidecar_key in self.conn.iterate(sql):
            yield os.fspath(path_from_key(key)), sidecar_key

    def get(self, path: Path) -> Optional[PhotoRecord]:
        row = self.conn.fetch_one(self._select + " WHERE path = ?", (path_key(path),))
        return None if row is None else self._record(row)

    def counts(self) -> dict[str, int]:
        total, located = self.conn.fetch_one(
            "SELECT COUNT(*), COUNT(CASE WHEN lat IS NOT NULL AND lon IS NOT NULL THEN 1 END) FROM photos")
        return {"total": total, "located": located, "unlocated": total - located}

    def __len__(self) -> int:
        return self.conn.fetch_one("SELECT COUNT(*) FROM photos")[0]

    def writer(self) -> Optional[str]:
        """Another process writing this database now ("pid 1234"), or None (see
        :func:`~geoloc.database.lock.lock_holder`); a reader's photos may be a first run's few."""
        if self.write:
            return None  # this process is the writer
        return lock_holder(self.path)

    @property
    def dead_rows(self) -> int:
        """Descriptor rows no photo references (replaced or removed photos, interrupted batches)."""
        return self.next_row - len(self)

    def descriptor_matrix(self, located_only: bool = True) -> tuple[list[PhotoRecord], np.ndarray]:
        """Records and their descriptors, row i of the matrix belonging to record i (a read-only
        memory map when the rows are contiguous, else a copy of only those rows)."""
        return snapshot.descriptor_matrix(self, located_only)

    def descriptor_file(self, located_only: bool = True) -> tuple[list[PhotoRecord], np.ndarray]:
        """Records and the whole descriptor file, memory-mapped read-only: record ``r``'s
        descriptor is row ``r.row``; nothing is copied."""
        return snapshot.descriptor_file(self, located_only)

    def descriptors_for(self, records: list[PhotoRecord]) -> np.ndarray:
        """The stored descriptors of some records, their rows looked up again as of the read."""
        return snapshot.descriptors_for(self, records)

    # ------------------------------------------------------------------ vocabulary (see .vocabulary)

    def has_vocabulary(self) -> bool:
        return vocabulary.has_vocabulary(self)

    def load_vocabulary(self) -> Optional[dict]:
        return vocabulary.load_vocabulary(self)

    def save_vocabulary(self, state: dict, manifest_changes: Optional[dict] = None) -> None:
        vocabulary.save_vocabulary(self, state, manifest_changes)

    def vocabulary_file_bytes(self) -> Optional[bytes]:
        return vocabulary.file_bytes(self)

    def vocabulary_from_file(self) -> Optional[bytes]:
        return vocabulary.from_file(self)

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
        self.conn.execute(begin)
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                self.conn.raw.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def require_write(self) -> None:
        if not self.write:
            raise DatabaseError(f"{self.where} was opened read-only")

    def checkpoint(self) -> None:
        """Move committed pages into the main file now: a lost WAL then costs nothing committed."""
        with contextlib.suppress(DatabaseError):
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def add_batch(self, records: list[PhotoRecord], descriptors: np.ndarray,
                  maps: Optional[list] = None) -> None:
        """Store photos and their descriptors in one transaction (all or nothing).

        ``maps``: per photo, its verification map as :func:`geoloc.retrieval.verify.quantize` gives it
        ``(int8 N×C, float16 scales, h, w)``, or None; for a database that stores maps.
        A photo already in the database is replaced; its old descriptor row becomes dead.
        """
        writing.add_batch(self, records, descriptors, maps)

    def map_slots(self, rows: Iterable[int]) -> list:
        """The stored verification maps of some rows, each ``(int8 N×C, scales, h, w)`` or None."""
        return snapshot.map_slots(self, rows)

    def adopt(self, records: list[PhotoRecord]) -> None:
        """Store photos whose descriptors are already in the file: each record's ``row`` is a
        dead row holding its content's descriptor (see :meth:`adoptable_rows`)."""
        writing.adopt(self, records)

    def update_file_stats(self, changes: Iterable[tuple[Path, int, int]]) -> int:
        """Record a new size/mtime for photos whose content hash proved them unchanged."""
        return writing.update_file_stats(self, changes)

    def update_positions(self, records: Iterable[PhotoRecord]) -> int:
        """Store new positions (and their source and sidecar fingerprint) of photos whose pixels
        did not change; nothing else of a photo is touched, its descriptor least of all."""
        return writing.update_positions(self, records)

    def update_times(self, records: Iterable[PhotoRecord]) -> int:
        """Capture times, cameras and GPS times read again for photos stored without them."""
        return writing.update_times(self, records)

    def remove(self, paths: Iterable[Path]) -> int:
        return writing.remove(self, paths)

    def needs_compaction(self) -> bool:
        return needs_compaction(self)

    def compact(self) -> int:
        """Rewrite the descriptor file and row index without dead rows; the rows dropped."""
        self.require_write()
        return compact(self)

    def finish_repair(self) -> None:
        """A repair is over: rows nobody claimed stay as dead rows, and the flag goes."""
        with self.transaction():
            self.conn.execute("DELETE FROM meta WHERE key = 'rebuilt'")
        self.rebuilt = False


# ---------------------------------------------------------------------------------------------
# Helpers


__all__ = ["Database"]
