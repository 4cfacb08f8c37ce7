"""Compaction: rewriting the descriptor file and its row index without dead rows.

Crash-safe in three steps: write both ``.compact`` files and fsync them; commit the new row
numbers together with ``compacting=1``; rename the new files into place and clear the flag. A
crash after the commit is finished by the next writer, and readers in between read the
``.compact`` files.
"""

from __future__ import annotations

import os

import numpy as np

from geoloc.database import rows as rowidx
from geoloc.database.layout import (
    COMPACT_FRACTION,
    COMPACT_MIN_ROWS,
    COMPACTING,
    DESCRIPTORS,
    MAPS,
    MAPS_COMPACTING,
    ROWS,
    ROWS_COMPACTING,
)
from geoloc.database.records import path_key
from geoloc.files import fsync_dir


def needs_compaction(db) -> bool:
    dead = db.dead_rows
    return dead >= COMPACT_MIN_ROWS and dead > COMPACT_FRACTION * max(db.next_row, 1)


def compact(db) -> int:
    """Rewrite descriptors.f32 and descriptors.idx without dead rows; rows dropped.

    Crash-safe in three steps: write both ``.compact`` files and fsync them; commit the new
    row numbers together with ``compacting=1``; rename the new files into place and clear
    the flag. A crash after the commit is finished by the next writer
    (``_finish_compaction``), and readers in between read the ``.compact`` files.
    """
    db.require_write()
    dead = db.dead_rows
    if dead == 0:
        return 0
    records = db.photos()
    n = db.next_row
    old = np.memmap(db.path / DESCRIPTORS, dtype=np.float32, mode="r", shape=(n, db.dim)) if n else None
    old_idx = np.memmap(db.path / ROWS, dtype=np.uint8, mode="r", shape=(n, rowidx.ENTRY)) if n else None
    sources = [(COMPACTING, old), (ROWS_COMPACTING, old_idx)]
    if db.maps:
        old_maps = np.memmap(db.path / MAPS, dtype=np.uint8, mode="r", shape=(n, db.maps.slot_bytes)) if n else None
        sources.append((MAPS_COMPACTING, old_maps))
    for target, source in sources:
        with open(db.path / target, "wb") as fh:
            for i in range(0, len(records), 4096):
                rows = [r.row for r in records[i:i + 4096]]
                fh.write(np.ascontiguousarray(source[rows]).tobytes())  # type: ignore[index]
            fh.flush()
            os.fsync(fh.fileno())
    del old, old_idx, sources
    with db.transaction():
        # Records are in increasing old-row order and new rows never exceed old ones, so
        # updating in this order never collides with the UNIQUE constraint.
        db.conn.executemany("UPDATE photos SET row = ? WHERE path = ?",
                               [(i, path_key(r.path)) for i, r in enumerate(records)])
        db.conn.execute("UPDATE meta SET value = ? WHERE key = 'next_row'", (len(records),))
        db.conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
        db.conn.execute("INSERT OR REPLACE INTO meta VALUES ('compacting', 1)")
    finish_compaction(db)
    return dead


def finish_compaction(db) -> None:
    pairs = ((COMPACTING, DESCRIPTORS), (ROWS_COMPACTING, ROWS), (MAPS_COMPACTING, MAPS))
    if db.meta("compacting", 0):
        db.close_files()
        for tmp, final in pairs:
            if (db.path / tmp).exists():
                os.replace(db.path / tmp, db.path / final)
        fsync_dir(db.path)
        with db.transaction():
            db.conn.execute("DELETE FROM meta WHERE key = 'compacting'")
    else:  # a compaction that crashed before its commit: the old files are current
        for tmp, _ in pairs:
            (db.path / tmp).unlink(missing_ok=True)
