"""Taking back what a database still holds: stored descriptors claimed by content, damaged
ones computed again, and a report of what could not be saved.

Every descriptor row carries the sha256 of the photo it came from (``descriptors.idx``). So a
photo whose record was lost (a deleted ``photos.sqlite``, a lost WAL) or that moved to another
folder gets its intact descriptor back by its content, without the network; and a photo whose
descriptor no longer matches its checksum is simply indexed again from its file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from geoloc.database import Database, PhotoRecord
from geoloc.errors import PhotoError
from geoloc.files import display_path, json_path, sha256_file
from geoloc.formatting import count


@dataclass
class RepairReport:
    """What ``geoloc index --repair`` did; ``unrepairable`` are the photos it had to drop."""

    rebuilt: list[str] = field(default_factory=list)  # files or counters rebuilt from the others
    claimed: int = 0  # photos that took a stored descriptor back by their content
    reextracted: int = 0  # photos whose damaged descriptor is computed again from the file
    unrepairable: list[tuple[Path, str]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "rebuilt": list(self.rebuilt),
            "claimed": self.claimed,
            "reextracted": self.reextracted,
            "unrepairable": [{"path": json_path(p), "reason": r} for p, r in self.unrepairable],
        }


def claim_stored_rows(database: Database, paths: list[Path], on_error: Callable[[PhotoError], None]) -> tuple[list[Path], int]:
    """Photos whose content already has an intact descriptor in an unreferenced row take that
    row back; returns the photos still to index, and how many were claimed.

    Costs one read of each new file (its hash), and only when such rows exist at all.
    """
    rows = database.adoptable_rows()
    if not rows or not paths:
        return paths, 0
    from geoloc.photos import read_meta

    rest: list[Path] = []
    claimed: list[PhotoRecord] = []
    for path in paths:
        try:
            sha = sha256_file(path)
        except OSError:
            rest.append(path)  # the extraction pass says what is wrong with it
            continue
        row = rows.pop(sha, None)
        if row is None:
            rest.append(path)
            continue
        try:
            st = os.stat(path)
            meta = read_meta(path)
        except (OSError, PhotoError) as exc:
            on_error(exc if isinstance(exc, PhotoError) else PhotoError(path, f"cannot read: {exc}"))
            continue
        claimed.append(_record(path, st, sha, meta, row))
    for start in range(0, len(claimed), 256):
        database.adopt(claimed[start:start + 256])
    return rest, len(claimed)


def _record(path: Path, st: os.stat_result, sha: str, meta, row: int) -> PhotoRecord:
    width, height = meta.width, meta.height
    if width and height and getattr(meta, "orientation", 1) in (5, 6, 7, 8):
        width, height = height, width
    record = PhotoRecord(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=sha,
                         width=width, height=height, row=row)
    record.take_time(meta)
    record.take_position(meta)
    return record


def damaged_photos(database: Database, report: RepairReport) -> list[Path]:
    """The photos whose stored descriptor is damaged: those whose file is still there are to be
    indexed again; the others are dropped (their descriptor is lost) and listed as unrepairable."""
    records = database.photos()
    bad = database.damaged_rows(records)
    again: list[Path] = []
    gone: list[Path] = []
    for record in records:
        if record.row not in bad:
            continue
        if Path(record.path).is_file():
            again.append(Path(record.path))
        else:
            gone.append(Path(record.path))
            report.unrepairable.append((Path(record.path), "its descriptor is damaged and the file is gone"))
    if gone:
        database.remove(gone)
    report.reextracted = len(again)
    return again


def describe(report: RepairReport) -> str:
    """One line for people: what the repair did."""
    parts = []
    if report.rebuilt:
        parts.append("rebuilt " + ", ".join(report.rebuilt))
    if report.claimed:
        parts.append(f"{report.claimed} stored descriptors taken back by their photos")
    if report.reextracted:
        parts.append(f"{count(report.reextracted, 'damaged descriptor')} computed again")
    if report.unrepairable:
        first = display_path(report.unrepairable[0][0])
        parts.append(f"{count(len(report.unrepairable), 'photo')} could not be repaired (e.g. {first}: {report.unrepairable[0][1]})")
    return "; ".join(parts) or "nothing to repair"
