"""What changed in an archive since its database last saw it: which photos are new or changed,
which only moved in time (a copy, a ``touch``), whose sidecar position changed, and which are
gone for good (``--prune``).

Only file metadata and, where it is ambiguous, the content hash are read here: no photo is
decoded and no network runs, so a re-run over an unchanged archive stays cheap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from geoloc.database import Database, PhotoRecord
from geoloc.errors import PhotoError
from geoloc.files import sha256_file
from geoloc.progress import Progress


@dataclass
class Scan:
    """The photos found, split against the database."""

    to_index: list[Path] = field(default_factory=list)  # new, or changed content: sorted
    seen: set[str] = field(default_factory=set)  # every photo found, resolved
    unchanged: int = 0  # already current (a refreshed size and mtime included)
    positions_updated: int = 0  # current photos whose sidecar position changed and was stored


def scan(found: Iterable[Path], database: Database, on_error: Callable[[PhotoError], None],
         progress: Progress) -> Scan:
    """Split the photos found into those to index and those already current.

    A photo whose size and mtime match the database is current. When they differ, the content
    hash decides: same content (a copy, a ``touch``) only refreshes the stored size and mtime.
    A current photo without an EXIF position whose sidecars are not those stored (one
    appeared, changed or went) has its position read again and stored, without the network.
    """
    known = {path: (size, mtime_ns, sha256)
             for path, size, mtime_ns, sha256 in database.file_stats()}
    sidecar_keys = dict(database.sidecar_keys())
    result = Scan()
    to_index, seen = result.to_index, result.seen
    touched: list[tuple[Path, int, int]] = []
    relocate: list[tuple[Path, os.stat_result]] = []
    for path in found:
        progress.advance(1)
        try:
            resolved = Path(os.path.realpath(path))
            st = os.stat(resolved)
        except OSError as exc:
            on_error(PhotoError(path, f"cannot read: {exc.strerror or exc}"))
            continue
        key = os.fspath(resolved)
        if key in seen:
            continue
        seen.add(key)
        stored = known.get(key)
        if stored is None:
            to_index.append(resolved)
            continue
        if not (stored[0] == st.st_size and stored[1] == st.st_mtime_ns):
            try:
                same = stored[2] is not None and sha256_file(resolved) == stored[2]
            except OSError as exc:
                on_error(PhotoError(path, f"cannot read: {exc.strerror or exc}"))
                continue
            if not same:
                to_index.append(resolved)
                continue
            touched.append((resolved, st.st_size, st.st_mtime_ns))
        result.unchanged += 1
        if key in sidecar_keys and _sidecars_now(resolved) != sidecar_keys[key]:
            relocate.append((resolved, st))
    if touched:
        database.update_file_stats(touched)
    if relocate:
        result.positions_updated = _update_positions(database, relocate, on_error)
    to_index.sort()
    return result


def _sidecars_now(path: Path) -> Optional[str]:
    from geoloc.photos.sidecars import find_sidecars, sidecar_key

    return sidecar_key(find_sidecars(path))


def _update_positions(database: Database, photos: list[tuple[Path, os.stat_result]], on_error) -> int:
    """Read the positions of photos whose sidecars changed and store those that differ."""
    from geoloc.photos import read_meta

    updates: list[PhotoRecord] = []
    changed = 0
    for path, st in photos:
        try:
            meta = read_meta(path)
        except PhotoError as exc:
            on_error(exc)
            continue
        stored = database.get(path)
        if stored is None:
            continue
        record = PhotoRecord(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=stored.sha256)
        record.take_position(meta)
        updates.append(record)
        changed += _position_of(stored) != _position_of(record)
    database.update_positions(updates)  # the new sidecar fingerprints too, changed or not
    return changed


def _position_of(record: PhotoRecord) -> tuple:
    if not record.located:
        return (None,)
    return record.lat, record.lon, record.alt, record.gps_accuracy_m, record.gps_source


def prune(database: Database, roots: Sequence[Path | str], seen: set[str]) -> int:
    """Remove photos under ``roots`` whose files are gone.

    Only a definite "no such file" counts: a photo on an unmounted drive or in a folder that is
    unreadable right now is kept, so nothing is dropped by accident.
    """
    drops = pruned_by(roots, seen)
    gone = [record.path for record in database.iter_photos() if drops(record.path)]
    return database.remove(gone) if gone else 0


def pruned_by(roots: Sequence[Path | str], seen: set[str]) -> Callable[[Path], bool]:
    """What ``--prune`` drops (for :func:`prune` and a refit alike): a stored photo under
    ``roots`` that this run did not find and whose file is definitely gone."""
    resolved = [os.path.realpath(Path(r).expanduser()) for r in roots]

    def drops(path: Path) -> bool:
        key = os.fspath(path)
        if key in seen or not any(_is_under(key, root) for root in resolved):
            return False
        try:
            os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return True
        except OSError:
            pass
        return False

    return drops


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def read_times_again(database: Database, progress: Progress) -> int:
    """Read the capture time, camera and GPS time of every stored photo once more, for a
    database whose rows were stored before geoloc kept the camera and GPS time (trips need them).
    EXIF only: no pixels, no network; a photo that is gone or unreadable keeps what it has.
    Returns how many rows were updated; the database is marked so that it happens once."""
    from geoloc.database.layout import TRIP_COLUMNS_READ
    from geoloc.photos import read_meta

    if database.meta(TRIP_COLUMNS_READ, 0):
        return 0
    records = [r for r in database.iter_photos()]
    progress.stage("Reading capture times", len(records))
    updated = []
    for record in records:
        try:
            meta = read_meta(record.path, sidecars=False)
        except (PhotoError, OSError):
            meta = None
        if meta is not None:
            record.take_time(meta)
            updated.append(record)
        progress.advance(1)
    return database.update_times(updated)
