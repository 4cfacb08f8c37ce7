"""Bringing a database folder back to a consistent state: after a crash (every writer), after
damage (``--repair``), and from geoloc 0.1.0's format. Nothing stored is ever cut off here but a
torn partial row or a row that was never committed (no index entry)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from geoloc.database import rows as rowidx
from geoloc.database.compaction import finish_compaction
from geoloc.database.layout import (
    DAMAGED,
    DATA_FILES,
    REFIT_BUILDING,
    DESCRIPTORS,
    FORMAT_VERSION,
    LOCK,
    MANIFEST,
    MAPS,
    ROWS,
    SQLITE,
    VOCABULARY,
    is_own_name,
    repair_hint,
)
from geoloc.database.lock import WriteLock
from geoloc.database.manifest import read_manifest_file, write_manifest
from geoloc.database.sqlite import Connection, add_missing_columns, connect
from geoloc.errors import DatabaseDamagedError, DatabaseError
from geoloc.files import atomic_write, display_path


def recover(db, repair: bool) -> None:
    """Bring the folder to a consistent state after a crash, losing nothing stored."""
    finish_compaction(db)
    for leftover in db.path.glob(".*.tmp"):  # an atomic write of geoloc's killed half-way
        if not is_own_name(leftover.name):  # another program's, or the user's: not ours to remove
            continue
        with contextlib.suppress(OSError):
            leftover.unlink()
    if db.meta("manifest") is None:
        migrate_from_v1(db)
    add_missing_columns(db.conn)
    if repair:
        repair_state(db)
    finish_vocabulary_save(db, repair)
    adopt_tail(db)


def migrate_from_v1(db) -> None:
    """A geoloc 0.1.0 database: add the row index and the copies, once, trusting what is stored.

    Its rows past the committed mark are the uncommitted tail 0.1.0 itself truncated; every
    committed row gets its index entry from the photo's recorded hash and the row's bytes.
    """
    n = db.next_row
    desc = db.path / DESCRIPTORS
    size = desc.stat().st_size if desc.exists() else 0
    if size < n * db.row_bytes:
        raise db.damage([f"{DESCRIPTORS} is shorter than {SQLITE} says ({size} < {n * db.row_bytes} bytes)"])
    sha = {int(row): s for row, s in db.conn.fetch_all("SELECT row, sha256 FROM photos")}
    fd = db.descriptor_fd()
    os.ftruncate(fd, n * db.row_bytes)
    matrix = np.memmap(desc, dtype=np.float32, mode="r", shape=(n, db.dim)) if n else None
    with open(db.path / ROWS, "wb") as fh:
        for start in range(0, n, 4096):
            part = np.ascontiguousarray(matrix[start:start + 4096])
            fh.write(rowidx.entries([sha.get(r) for r in range(start, start + len(part))],
                                    part.tobytes(), db.row_bytes))
        fh.flush()
        os.fsync(fh.fileno())
    del matrix
    state = db.vocabulary_from_file()
    with db.transaction():
        if state is not None:
            db.conn.execute("INSERT OR REPLACE INTO meta VALUES ('vocabulary', ?)", (state,))
        manifest = {**db.manifest, "format": FORMAT_VERSION, "revision": 1}
        db.conn.execute("INSERT OR REPLACE INTO meta VALUES ('manifest', ?)",
                           (json.dumps(manifest, sort_keys=True),))
        db.conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
    write_manifest(db.path, manifest)
    db.set_manifest(manifest)


def repair_state(db) -> None:
    """``--repair``: rebuild a lost row counter, row index or mirror from what survives."""
    if db.meta("generation") is None:
        with db.transaction():
            db.conn.execute("INSERT OR REPLACE INTO meta VALUES ('generation', 0)")
    if db.meta("next_row") is None:
        top = db.conn.fetch_one("SELECT MAX(row) FROM photos")[0]
        rows = max(db.physical_rows(), -1 if top is None else int(top) + 1)
        with db.transaction():
            db.conn.execute("INSERT OR REPLACE INTO meta VALUES ('next_row', ?)", (rows,))
        db.repaired.append(f"{SQLITE}'s row counter")
    if not (db.path / ROWS).exists():
        rebuild_row_index(db)
        db.repaired.append(f"{ROWS} (from the rows as they are)")
    if db.meta("vocabulary") is not None:
        blob = bytes(db.meta("vocabulary"))
        if db.vocabulary_file_bytes() != blob:
            atomic_write(db.path / VOCABULARY, blob)
            db.repaired.append(VOCABULARY)
    elif (db.path / VOCABULARY).exists():
        state = db.vocabulary_from_file()
        if state is not None:
            with db.transaction():
                db.conn.execute("INSERT OR REPLACE INTO meta VALUES ('vocabulary', ?)", (state,))


def rebuild_row_index(db) -> None:
    """A lost ``descriptors.idx``: entries from the recorded photo hashes and the rows as they
    are now (they can no longer be verified against what was written)."""
    n = min(db.next_row, db.descriptor_rows())
    if db.maps:
        n = min(n, db.map_rows())
    sha = {int(row): s for row, s in db.conn.fetch_all("SELECT row, sha256 FROM photos")}
    matrix = np.memmap(db.path / DESCRIPTORS, dtype=np.float32, mode="r", shape=(n, db.dim)) if n else None
    slot = db.maps.slot_bytes if db.maps else 0
    slots = np.memmap(db.path / MAPS, dtype=np.uint8, mode="r", shape=(n, slot)) if n and slot else None
    with open(db.path / ROWS, "wb") as fh:
        for start in range(0, n, 4096):
            part = np.ascontiguousarray(matrix[start:start + 4096])
            maps = np.ascontiguousarray(slots[start:start + 4096]).tobytes() if slots is not None else b""
            fh.write(rowidx.entries([sha.get(r) for r in range(start, start + len(part))],
                                    part.tobytes(), db.row_bytes, maps, slot))
        fh.flush()
        os.fsync(fh.fileno())


def adopt_tail(db) -> None:
    """Rows past the committed mark are kept as dead rows (an interrupted batch, or commits
    lost with photos.sqlite-wal: their photos take them back by content hash). Only a torn
    partial row, or a row without its index entry (never committed), is cut off."""
    complete = db.physical_rows()
    n = db.next_row
    if complete < n:
        return  # damage: reported by structural_problems
    files = [(DESCRIPTORS, db.row_bytes, db.descriptor_fd), (ROWS, rowidx.ENTRY, db.index_fd)]
    if db.maps:
        files.append((MAPS, db.maps.slot_bytes, db.maps_fd))
    for name, unit, fd_of in files:
        file = db.path / name
        if file.exists() and file.stat().st_size != complete * unit:
            fd = fd_of()
            os.ftruncate(fd, complete * unit)
            os.fsync(fd)
    if complete > n:
        with db.transaction():
            db.conn.execute("UPDATE meta SET value = ? WHERE key = 'next_row'", (complete,))


def finish_vocabulary_save(db, repair: bool) -> None:
    """A save killed after its SQLite transaction: the mirror file is written now."""
    blob = db.meta("vocabulary")
    if blob is not None and (repair or db.manifest_behind) and db.vocabulary_file_bytes() != bytes(blob):
        atomic_write(db.path / VOCABULARY, bytes(blob))


def connect_or_rebuild(path: Path) -> Connection:
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
    manifest, problem = read_manifest_file(path)
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
    rows = complete_rows(path, manifest)
    manifest = {**manifest, "format": FORMAT_VERSION, "revision": int(manifest.get("revision", 0)) + 1}
    conn.execute("BEGIN IMMEDIATE")
    for key, value in (("next_row", rows), ("generation", 0), ("rebuilt", 1),
                       ("manifest", json.dumps(manifest, sort_keys=True))):
        conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
    conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
    conn.execute("COMMIT")
    return conn


def complete_rows(path: Path, manifest: dict) -> int:
    """Rows whose descriptor, index entry and (if stored) map slot are all complete."""
    from geoloc.database.maps import MapSpec

    dim = int(manifest["dim"])
    desc = path / DESCRIPTORS
    rows = desc.stat().st_size // (dim * 4) if desc.exists() else 0
    idx = path / ROWS
    if idx.exists():
        rows = min(rows, idx.stat().st_size // rowidx.ENTRY)
    spec = MapSpec.from_manifest(manifest)
    if spec is not None:
        maps = path / MAPS
        rows = min(rows, maps.stat().st_size // spec.slot_bytes if maps.exists() else 0)
    return rows

def refuse_non_empty(path: Path, lock: WriteLock) -> None:
    """A new database only in an empty folder, or over the empty leftovers of a crashed create."""
    def release() -> None:
        lock.release()
        (path / LOCK).unlink(missing_ok=True)  # leave the folder as it was

    names = [p.name for p in path.iterdir() if p.name not in (LOCK, REFIT_BUILDING) and not p.name.endswith(".tmp")]
    foreign = sorted(n for n in names if n not in DATA_FILES)
    if foreign:  # e.g. --db pointing at a photo folder by mistake
        release()
        raise DatabaseError(
            f"cannot create database {display_path(path)}: the folder is not empty and not a geoloc "
            f"database (it holds {display_path(foreign[0])}{' and more' if len(foreign) > 1 else ''}); "
            "choose a new or empty folder"
        )
    holding = [n for n in names if holds_data(path / n)]
    if holding:
        release()
        raise DatabaseDamagedError(
            f"database {display_path(path)}", [f"{MANIFEST} is missing but {holding[0]} holds data"],
            repair_hint(display_path(path)))
    for name in names:  # a create that crashed before it was done: nothing in these files
        (path / name).unlink(missing_ok=True)


def holds_data(file: Path) -> bool:
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
