"""Writing photos into a database, in the order that makes ``kill -9`` harmless.

Descriptor bytes, their map slots and their ``descriptors.idx`` entries are written and fsynced
*before* the SQLite transaction that refers to them commits (:func:`add_batch`): a crash leaves
at worst rows past the committed high-water mark, which later runs take back by content. Every
function here takes an open, writable :class:`~geoloc.database.store.Database`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from geoloc.database import rows as rowidx
from geoloc.database.layout import DESCRIPTORS, MAPS, ROWS, TRIP_COLUMNS_READ
from geoloc.database.opening import utc_now
from geoloc.database.records import TRIP_COLUMNS, PhotoRecord, path_key
from geoloc.errors import DatabaseError


def _append(db, descriptors: np.ndarray, sha256s: list[Optional[str]], slots: Optional[bytes]) -> int:
    """Write rows, their map slots and their index entries at the end, durably; the first
    new row. All three are fsynced before the transaction that refers to them commits."""
    start = db.next_row
    data = memoryview(np.ascontiguousarray(descriptors, dtype=np.float32)).cast("B")
    slot_bytes = db.maps.slot_bytes if db.maps else 0
    if db.maps and slots is None:
        slots = bytes(slot_bytes * len(sha256s))  # empty slots: no map to verify with
    entries = rowidx.entries(sha256s, data, db.row_bytes, slots or b"", slot_bytes)
    writes = [(db.descriptor_fd(), data, start * db.row_bytes, DESCRIPTORS)]
    if db.maps:
        writes.append((db.maps_fd(), memoryview(slots), start * slot_bytes, MAPS))
    writes.append((db.index_fd(), entries, start * rowidx.ENTRY, ROWS))
    for fd, payload, offset, name in writes:
        try:
            os.ftruncate(fd, offset)  # a torn row of a failed earlier attempt, never a stored one
            written = 0
            while written < len(payload):
                written += os.pwrite(fd, payload[written:], offset + written)
            os.fsync(fd)
        except OSError as exc:
            raise DatabaseError(
                f"cannot write {db.where}: {name}: {exc.strerror or exc}; free some space and run "
                "again (what is stored is kept)"
            ) from None
    return start


def add_batch(db, records: list[PhotoRecord], descriptors: np.ndarray,
              maps: Optional[list] = None) -> None:
    """Store photos and their descriptors in one transaction (all or nothing).

    ``maps``: per photo, its verification map as :func:`geoloc.retrieval.verify.quantize` gives it
    ``(int8 N×C, float16 scales, h, w)``, or None; for a database that stores maps.
    A photo already in the database is replaced; its old descriptor row becomes dead.
    """
    db.require_write()
    if not records:
        return
    descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
    if descriptors.shape != (len(records), db.dim):
        raise ValueError(f"descriptors have shape {descriptors.shape}, expected ({len(records)}, {db.dim})")
    keys = [path_key(r.path) for r in records]
    if len(set(keys)) != len(keys):
        raise ValueError("a batch lists the same photo twice")
    slots = None
    if db.maps and maps is not None:
        slots = b"".join(db.maps.encode(*(m if m is not None else (None, None, 0, 0))) for m in maps)
    start = _append(db, descriptors, [r.sha256 for r in records], slots)
    for i, record in enumerate(records):
        record.row = start + i
    _insert(db, records, keys, next_row=start + len(records))


def adopt(db, records: list[PhotoRecord]) -> None:
    """Store photos whose descriptors are already in the file: each record's ``row`` is a
    dead row holding its content's descriptor (see :meth:`Database.adoptable_rows`)."""
    db.require_write()
    if records:
        _insert(db, records, [path_key(r.path) for r in records], next_row=None)


def _insert(db, records: list[PhotoRecord], keys: list, next_row: Optional[int]) -> None:
    now = utc_now()
    rows = [(key, r.size, r.mtime_ns, r.sha256, r.lat, r.lon, r.alt, r.taken_at, r.gps_accuracy_m,
             r.width, r.height, r.row, now, _source(r), r.sidecar_key,
             *(getattr(r, c) for c in TRIP_COLUMNS))
            for r, key in zip(records, keys)]
    with db.transaction():
        db.conn.executemany(
            "INSERT INTO photos (path, size, mtime_ns, sha256, lat, lon, alt, taken_at, "
            "gps_accuracy_m, width, height, row, indexed_at, gps_source, sidecar_key, "
            + ", ".join(TRIP_COLUMNS) + ") "
            "VALUES (" + ", ".join("?" * (15 + len(TRIP_COLUMNS))) + ") "
            "ON CONFLICT(path) DO UPDATE SET size=excluded.size, mtime_ns=excluded.mtime_ns, "
            "sha256=excluded.sha256, lat=excluded.lat, lon=excluded.lon, alt=excluded.alt, "
            "taken_at=excluded.taken_at, gps_accuracy_m=excluded.gps_accuracy_m, "
            "width=excluded.width, height=excluded.height, row=excluded.row, "
            "indexed_at=excluded.indexed_at, gps_source=excluded.gps_source, "
            "sidecar_key=excluded.sidecar_key, "
            + ", ".join(f"{c}=excluded.{c}" for c in TRIP_COLUMNS),
            rows,
        )
        if next_row is not None:
            db.conn.execute("UPDATE meta SET value = ? WHERE key = 'next_row'", (next_row,))
    db.checkpoint()


def update_file_stats(db, changes: Iterable[tuple[Path, int, int]]) -> int:
    """Record a new size/mtime for photos whose content hash proved them unchanged."""
    db.require_write()
    with db.transaction():
        cur = db.conn.executemany(
            "UPDATE photos SET size = ?, mtime_ns = ? WHERE path = ?",
            [(size, mtime_ns, path_key(p)) for p, size, mtime_ns in changes],
        )
    return cur.rowcount


def update_positions(db, records: Iterable[PhotoRecord]) -> int:
    """Store new positions (and their source and sidecar fingerprint) of photos whose pixels
    did not change: a sidecar appeared, changed or went. Nothing else of a photo is touched,
    its descriptor least of all."""
    db.require_write()
    rows = [(r.lat, r.lon, r.alt, r.gps_accuracy_m, _source(r), r.sidecar_key, r.size, r.mtime_ns,
             path_key(r.path)) for r in records]
    if not rows:
        return 0
    with db.transaction():
        cur = db.conn.executemany(
            "UPDATE photos SET lat = ?, lon = ?, alt = ?, gps_accuracy_m = ?, gps_source = ?, "
            "sidecar_key = ?, size = ?, mtime_ns = ? WHERE path = ?", rows)
    db.checkpoint()
    return cur.rowcount


def update_times(db, records: Iterable[PhotoRecord]) -> int:
    """Store the capture time, camera and GPS time read again for photos stored before geoloc
    kept them, and mark the database as holding them for every row. Nothing else changes."""
    db.require_write()
    rows = [(r.taken_at, *(getattr(r, c) for c in TRIP_COLUMNS), path_key(r.path)) for r in records]
    with db.transaction():
        cur = db.conn.executemany(
            "UPDATE photos SET taken_at = ?, " + ", ".join(f"{c} = ?" for c in TRIP_COLUMNS) + " WHERE path = ?",
            rows) if rows else None
        db.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, 1)", (TRIP_COLUMNS_READ,))
    db.checkpoint()
    return cur.rowcount if cur is not None else 0


def remove(db, paths: Iterable[Path]) -> int:
    db.require_write()
    with db.transaction():
        cur = db.conn.executemany("DELETE FROM photos WHERE path = ?", [(path_key(p),) for p in paths])
    return max(cur.rowcount, 0)


def _source(record: PhotoRecord) -> Optional[str]:
    """What is stored as a record's ``gps_source``: none without a position, EXIF when a
    caller gave a position without saying where from."""
    if not record.located:
        return None
    return record.gps_source or "exif"
