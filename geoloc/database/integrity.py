"""What can be verified about a database without changing it: the checks every open runs, and
the stored descriptors against their checksums (``geoloc check`` runs them all)."""

from __future__ import annotations


from typing import Iterable

from geoloc.formatting import count
from geoloc.database import rows as rowidx
from geoloc.database.layout import (
    DESCRIPTORS,
    MAPS,
    QUICK_CHECK_BYTES,
    ROWS,
    SQLITE,
    VERIFY_ALL_BYTES,
    VOCABULARY,
)
from geoloc.database.records import PhotoRecord
from geoloc.files import display_path


def structural_problems(db) -> list[str]:
    """What is wrong without reading the descriptors: the files' sizes and counters agree,
    SQLite's own structure is sound (checked for files up to 64 MiB)."""
    problems: list[str] = []
    for key in ("next_row", "generation"):
        value = db.meta(key)
        if value is None or not str(value).lstrip("-").isdigit():
            problems.append(f"{SQLITE} lacks its {key.replace('_', ' ')} counter")
    if problems:
        return problems
    sqlite_file = db.path / SQLITE
    if sqlite_file.exists() and sqlite_file.stat().st_size <= QUICK_CHECK_BYTES:
        verdict = db.conn.fetch_one("PRAGMA quick_check(1)")[0]
        if verdict != "ok":
            problems.append(f"{SQLITE} is damaged ({verdict})")
            return problems
    n = db.next_row
    have = db.descriptor_rows(readers_path=True)
    if have < n:
        problems.append(f"{DESCRIPTORS} holds {have} of the {n} rows {SQLITE} counts")
    if db.meta("manifest") is not None:  # format 2: the row index is part of the database
        if not (db.path / ROWS).exists():
            problems.append(f"{ROWS} is missing")
        elif db.index_rows(readers_path=True) < n:
            problems.append(f"{ROWS} holds {db.index_rows(readers_path=True)} of the {n} entries {SQLITE} counts")
    if db.maps and db.map_rows(readers_path=True) < n:
        problems.append(f"{MAPS} holds {db.map_rows(readers_path=True)} of the {n} maps {SQLITE} counts")
    top = db.conn.fetch_one("SELECT MAX(row), MIN(row) FROM photos")
    if top[0] is not None and (int(top[0]) >= n or int(top[1]) < 0):
        problems.append(f"{SQLITE} refers to descriptor rows beyond its own counter ({int(top[0])} ≥ {n})")
    problems.extend(_vocabulary_problems(db))
    return problems


def verify(db, records: list[PhotoRecord] | None = None, *, budget: int = VERIFY_ALL_BYTES) -> list[str]:
    """Check stored descriptors against their checksums and photo hashes; the problems.

    All referenced rows when they fit ``budget`` bytes (else none: the caller verifies the
    rows it is about to use with :meth:`damaged_rows`).
    """
    if db.meta("manifest") is None:  # geoloc 0.1.0 stored no checksums
        return []
    records = db.photos() if records is None else records
    if len(records) * db.row_bytes > budget:
        return []
    bad = db.damaged_rows(records)
    if not bad:
        return []
    names = [display_path(r.path) for r in records if r.row in bad]
    first = ", ".join(names[:2]) + (" …" if len(names) > 2 else "")
    one = len(bad) == 1
    return [f"{DESCRIPTORS}: {count(len(bad), 'stored descriptor')} no longer "
            f"{'matches its' if one else 'match their'} checksum ({first})"]


class _Rows:
    """Reads a row's descriptor bytes, index entry and map slot, and says whether they agree."""

    def __init__(self, db, readers_path: bool = True):
        self.db = db
        self.paths = [db.descriptor_path() if readers_path else db.path / DESCRIPTORS,
                      db.index_path() if readers_path else db.path / ROWS]
        if db.maps:
            self.paths.append(db.maps_path() if readers_path else db.path / MAPS)
        self.files: list = []

    def usable(self) -> bool:
        return all(p.is_file() for p in self.paths)

    def __enter__(self):
        self.files = [open(p, "rb") for p in self.paths]
        return self

    def __exit__(self, *exc):
        for fh in self.files:
            fh.close()

    def _read(self, k: int, row: int, size: int) -> bytes:
        self.files[k].seek(row * size)
        return self.files[k].read(size)

    def intact(self, row: int) -> tuple[bool, bytes | None]:
        """(whether the row's bytes and map match their checksums, its photo's digest)."""
        db = self.db
        data = self._read(0, row, db.row_bytes)
        parsed = rowidx.parse(self._read(1, row, rowidx.ENTRY))
        if len(data) != db.row_bytes or parsed is None or parsed[1] != rowidx.row_crc(data):
            return False, None
        if db.maps:
            slot = self._read(2, row, db.maps.slot_bytes)
            if len(slot) != db.maps.slot_bytes or parsed[2] != rowidx.row_crc(slot):
                return False, None
        return True, parsed[0]


def damaged_rows(db, records: Iterable[PhotoRecord]) -> set[int]:
    """Rows of ``records`` whose descriptor bytes, map, index entry or photo hash disagree."""
    records = [r for r in records if r.row >= 0]
    if not records or db.meta("manifest") is None:
        return set()
    records.sort(key=lambda r: r.row)
    rows = _Rows(db)
    if not rows.usable():
        return {r.row for r in records}
    bad: set[int] = set()
    n = db.next_row
    with rows:
        for r in records:
            ok, digest = rows.intact(r.row) if r.row < n else (False, None)
            if not ok or (r.sha256 and rowidx.hex_of(digest) not in (None, r.sha256)):
                bad.add(r.row)
    return bad


def adoptable_rows(db) -> dict[str, int]:
    """``{photo sha256: row}`` of dead rows whose descriptor is intact: a photo with that
    content takes its row back instead of going through the network again (after a lost
    WAL or photos.sqlite, or a photo moved to another folder). Rows written before
    ``adoptable_from`` (a refitted vocabulary made them stale) are never taken back."""
    if db.meta("manifest") is None or db.dead_rows <= 0:
        return {}
    rows = _Rows(db, readers_path=False)
    if not rows.usable():
        return {}
    live = {int(r) for (r,) in db.conn.fetch_all("SELECT row FROM photos")}
    first = int(db.meta("adoptable_from", 0) or 0)
    found: dict[str, int] = {}
    with rows:
        for row in range(first, db.next_row):
            if row in live:
                continue
            ok, digest = rows.intact(row)
            if ok and rowidx.hex_of(digest) is not None:
                found[rowidx.hex_of(digest)] = row  # the latest row of a content wins
    return found


def _vocabulary_problems(db) -> list[str]:
    """A vocabulary the manifest says was fitted, with neither its copy nor its file."""
    if db.manifest.get("vocabulary_sha256") and db.meta("vocabulary") is None \
            and not (db.path / VOCABULARY).exists():
        return [f"the fitted vocabulary is lost ({SQLITE} has no copy and {VOCABULARY} is missing)"]
    return []
