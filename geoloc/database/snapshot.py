"""Reading descriptors and maps as of one consistent moment, whatever other processes do.

A compaction commits new row numbers and then renames its file into place, and a vocabulary
refit may put a whole new folder where this one was: records, row count and file read outside
one snapshot could mix the old and the new. Every read of stored rows goes through
:func:`snapshot`, and a reader whose folder was replaced says so in one line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from geoloc.database.records import PhotoRecord, path_key
from geoloc.errors import DatabaseError
from geoloc.files import display_path


def still_same_folder(db) -> None:
    """Stop a reader whose folder a refit replaced: its rows and the new folder's files differ."""
    if db.folder_identity is not None and identity(db.path) != db.folder_identity:
        raise DatabaseError(f"{db.where} was replaced while this command was reading it (a "
                            "vocabulary refit by `geoloc index` finished); run the command again")


def snapshot(db, read):
    """``read()`` run on one consistent view of the database, with the descriptor file's row
    count and path as of that view, retried if a compaction renumbered rows meanwhile.

    A compaction commits new row numbers and then renames its file into place; records,
    row count and file path read outside one snapshot could mix the old and the new.
    """
    for _ in range(5):
        generation = db.meta("generation", 0)
        with db.transaction("BEGIN"):
            value = read()
            next_row = db.next_row
            path = db.descriptor_path()
        if db.meta("generation", 0) == generation:
            still_same_folder(db)
            return value, next_row, path
    raise DatabaseError(f"{db.where} keeps changing; try again")  # pragma: no cover


def descriptor_matrix(db, located_only: bool = True) -> tuple[list[PhotoRecord], np.ndarray]:
    """Records and their descriptors, row i of the matrix belonging to record i.

    The matrix is a read-only memory-mapped view when the wanted rows are contiguous (the
    usual case for a database without dead rows); otherwise only the wanted rows are copied.
    """
    records, next_row, path = snapshot(db, lambda: db.photos(located_only=located_only))
    if not records:
        return records, np.zeros((0, db.dim), dtype=np.float32)
    matrix = np.memmap(path, dtype=np.float32, mode="r", shape=(next_row, db.dim))
    rows = np.fromiter((r.row for r in records), dtype=np.int64, count=len(records))
    first = int(rows[0])
    if int(rows[-1]) - first + 1 == len(rows):  # sorted and unique, so contiguous
        return records, matrix[first:first + len(rows)]
    return records, np.ascontiguousarray(matrix[rows])


def descriptor_file(db, located_only: bool = True) -> tuple[list[PhotoRecord], np.ndarray]:
    """Records and the whole descriptor file, memory-mapped read-only: record ``r``'s
    descriptor is row ``r.row``. Nothing is copied whatever the rows are (the compressed
    search re-scores its shortlist from it; a copy of a million rows would be 16 GB)."""
    records, next_row, path = snapshot(db, lambda: db.photos(located_only=located_only))
    if not next_row:
        return records, np.zeros((0, db.dim), dtype=np.float32)
    return records, np.memmap(path, dtype=np.float32, mode="r", shape=(next_row, db.dim))


def descriptors_for(db, records: list[PhotoRecord]) -> np.ndarray:
    """The stored descriptors of some records (e.g. to compare a query with them).

    Rows are looked up again in the same snapshot as the file is read: a record read before
    a compaction may carry a row number that now belongs to another photo.
    """
    if not records:
        return np.zeros((0, db.dim), dtype=np.float32)
    keys = [path_key(r.path) for r in records]

    def rows() -> list[int | None]:
        found = {}
        for chunk in range(0, len(keys), 500):
            part = keys[chunk:chunk + 500]
            marks = ",".join("?" * len(part))
            found.update(db.conn.fetch_all(f"SELECT path, row FROM photos WHERE path IN ({marks})", part))
        return [found.get(k) for k in keys]

    current, next_row, path = snapshot(db, rows)
    missing = [r.path for r, row in zip(records, current) if row is None]
    if missing:
        raise DatabaseError(f"{db.where}: {display_path(missing[0])} was removed while it was being read; try again")
    matrix = np.memmap(path, dtype=np.float32, mode="r", shape=(next_row, db.dim))
    return np.ascontiguousarray(matrix[current])


def map_slots(db, rows: Iterable[int]) -> list:
    """The stored verification maps of some rows, each ``(int8 N×C, scales, h, w)`` or None."""
    rows = list(rows)
    if not db.maps:
        return [None] * len(rows)
    spec = db.maps
    out = []
    with open(db.maps_path(), "rb") as fh:
        still_same_folder(db)  # after the open: the file is this folder's, or we stop
        for row in rows:
            fh.seek(int(row) * spec.slot_bytes)
            out.append(spec.decode(fh.read(spec.slot_bytes)))
    return out


def identity(path: Path) -> Optional[tuple[int, int]]:
    """The folder's (device, inode): the same name may come to mean another folder."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
