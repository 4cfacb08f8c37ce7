"""What can be verified about a database without changing it: the checks every open runs, and
the stored descriptors against their checksums (``geoloc check`` runs them all)."""

from __future__ import annotations


from typing import Iterable

from geoloc.database import rows as rowidx
from geoloc.database.layout import (
    DESCRIPTORS,
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
    return [f"{DESCRIPTORS}: {len(bad)} stored descriptor{'s' if len(bad) > 1 else ''} no longer match "
            f"{'their' if len(bad) > 1 else 'its'} checksum ({first})"]



def damaged_rows(db, records: Iterable[PhotoRecord]) -> set[int]:
    """Rows of ``records`` whose descriptor bytes, index entry or photo hash disagree."""
    records = [r for r in records if r.row >= 0]
    if not records or db.meta("manifest") is None:
        return set()
    records.sort(key=lambda r: r.row)
    bad: set[int] = set()
    desc_path, idx_path = db.descriptor_path(), db.index_path()
    if not (desc_path.is_file() and idx_path.is_file()):
        return {r.row for r in records}
    n = db.next_row
    with open(desc_path, "rb") as desc, open(idx_path, "rb") as idx:
        for r in records:
            if r.row >= n:
                bad.add(r.row)
                continue
            desc.seek(r.row * db.row_bytes)
            row = desc.read(db.row_bytes)
            idx.seek(r.row * rowidx.ENTRY)
            parsed = rowidx.parse(idx.read(rowidx.ENTRY))
            if (len(row) != db.row_bytes or parsed is None or parsed[1] != rowidx.row_crc(row)
                    or (r.sha256 and rowidx.hex_of(parsed[0]) not in (None, r.sha256))):
                bad.add(r.row)
    return bad



def adoptable_rows(db) -> dict[str, int]:
    """``{photo sha256: row}`` of dead rows whose descriptor is intact: a photo with that
    content takes its row back instead of going through the network again (after a lost
    WAL or photos.sqlite, or a photo moved to another folder)."""
    if db.meta("manifest") is None or db.dead_rows <= 0:
        return {}
    if not ((db.path / DESCRIPTORS).is_file() and (db.path / ROWS).is_file()):
        return {}
    live = {int(r) for (r,) in db.conn.fetch_all("SELECT row FROM photos")}
    found: dict[str, int] = {}
    with open(db.path / DESCRIPTORS, "rb") as desc, open(db.path / ROWS, "rb") as idx:
        for row in range(db.next_row):
            if row in live:
                continue
            idx.seek(row * rowidx.ENTRY)
            parsed = rowidx.parse(idx.read(rowidx.ENTRY))
            if parsed is None or rowidx.hex_of(parsed[0]) is None:
                continue
            desc.seek(row * db.row_bytes)
            if rowidx.row_crc(desc.read(db.row_bytes)) == parsed[1]:
                found[rowidx.hex_of(parsed[0])] = row  # the latest row of a content wins
    return found



def _vocabulary_problems(db) -> list[str]:
    """A vocabulary the manifest says was fitted, with neither its copy nor its file."""
    if db.manifest.get("vocabulary_sha256") and db.meta("vocabulary") is None \
            and not (db.path / VOCABULARY).exists():
        return [f"the fitted vocabulary is lost ({SQLITE} has no copy and {VOCABULARY} is missing)"]
    return []
