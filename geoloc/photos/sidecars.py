"""Which sidecar files sit next to a photo, in the order their positions are trusted.

A sidecar is found by name alone, from one listing of the photo's folder (kept for the folder
until its modification time changes): indexing a folder of thousands of photos, on a network
share too, costs one ``listdir`` rather than a dozen ``stat`` calls per photo. What the sidecars
hold is read by :mod:`geoloc.photos.xmp` and :mod:`geoloc.photos.takeout`.

Order (the first usable position wins, after the photo's own EXIF):

1. ``photo.jpg.xmp`` (darktable, digiKam): named for this very file;
2. ``photo.xmp`` (Lightroom, exiftool's ``%d%f.xmp``, Capture One): shared by a RAW and its JPEG;
3. Google Takeout's JSON (:func:`geoloc.photos.takeout.takeout_names`).

``.xmp`` and ``.XMP`` are both looked for; the photo's own name must match exactly.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from geoloc.photos.takeout import takeout_names

XMP = "xmp"
TAKEOUT = "takeout"


@dataclass(frozen=True)
class Sidecar:
    """One sidecar file found next to a photo.

    ``title``: for a Takeout JSON whose name alone does not prove it is this photo's, the
    ``title`` it must carry (see :mod:`geoloc.photos.takeout`).
    """

    kind: str
    path: Path
    size: int
    mtime_ns: int
    title: str | None = None


def sidecar_names(photo_name: str) -> list[tuple[str, str, str | None]]:
    """``(kind, file name, title)`` of every sidecar name a photo may have, most trusted first."""
    names: list[tuple[str, str, str | None]] = []
    stem, dot, _ = photo_name.rpartition(".")
    bases = [photo_name] + ([stem] if dot and stem else [])
    for base in bases:
        for ext in (".xmp", ".XMP"):
            names.append((XMP, base + ext, None))
    for candidate in takeout_names(photo_name):
        names.append((TAKEOUT, candidate.name, candidate.title))
    return names


def find_sidecars(photo: str | os.PathLike) -> list[Sidecar]:
    """The sidecars next to ``photo`` that exist now, most trusted first (see the module)."""
    photo = Path(photo)
    folder = photo.parent
    present = _listing(folder)
    if not present:
        return []
    found: list[Sidecar] = []
    seen: set[str] = set()
    for kind, name, title in sidecar_names(photo.name):
        if name not in present or name in seen or name == photo.name:
            continue
        seen.add(name)
        path = folder / name
        try:
            st = os.stat(path)
        except OSError:
            continue
        if not _is_file(st):
            continue
        found.append(Sidecar(kind, path, st.st_size, st.st_mtime_ns, title))
    return found


def sidecar_key(sidecars: list[Sidecar]) -> str | None:
    """A short fingerprint of which sidecars exist and their size and time, for the database:
    when it differs on a later run, a sidecar appeared, changed or went, and the photo's
    position is read again (its pixels are not). ``None`` without sidecars."""
    if not sidecars:
        return None
    digest = hashlib.sha256()
    for s in sidecars:
        digest.update(os.fsencode(s.path.name) + b"\0" + f"{s.size}:{s.mtime_ns}".encode() + b"\n")
    return digest.hexdigest()[:32]


def _is_file(st: os.stat_result) -> bool:
    import stat

    return stat.S_ISREG(st.st_mode)


# --- folder listings ---------------------------------------------------------------------------

_LISTINGS_KEPT = 64
_RACY_NS = 2_000_000_000
_listings: OrderedDict[str, tuple[int, frozenset[str]]] = OrderedDict()
_listings_lock = threading.Lock()


def _listing(folder: Path) -> frozenset[str]:
    """The names in ``folder``, listed again only when its modification time changed (a file
    created, renamed or removed there changes it; an edit in place is seen by the ``stat``
    of the sidecar itself).

    A listing taken within :data:`_RACY_NS` of the folder's modification time is not kept: a
    file created in the same clock tick would leave the time unchanged (git's "racy" rule).
    """
    key = os.fspath(folder) or "."
    try:
        mtime = os.stat(key).st_mtime_ns
    except OSError:
        return frozenset()
    with _listings_lock:
        cached = _listings.get(key)
        if cached is not None and cached[0] == mtime:
            _listings.move_to_end(key)
            return cached[1]
    try:
        names = frozenset(os.listdir(key))
    except OSError:
        return frozenset()
    if time.time_ns() - mtime < _RACY_NS:
        return names
    with _listings_lock:
        _listings[key] = (mtime, names)
        _listings.move_to_end(key)
        while len(_listings) > _LISTINGS_KEPT:
            _listings.popitem(last=False)
    return names
