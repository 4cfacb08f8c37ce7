"""One photo as the database stores it, and how its path is kept whatever bytes it holds."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

from geoloc.files import json_path_fields

COLUMNS = (
    "path", "size", "mtime_ns", "sha256", "lat", "lon", "alt", "taken_at",
    "gps_accuracy_m", "width", "height", "row",
)
#: Columns added after format 2 was released, with their types: added to an existing database
#: by its first writer (``ALTER TABLE``); a database without them still reads (see
#: :func:`record_from_row`), so older and newer geoloc versions share a database.
ADDED_COLUMNS = (("gps_source", "TEXT"), ("sidecar_key", "TEXT"), ("camera_make", "TEXT"),
                 ("camera_model", "TEXT"), ("camera_serial", "TEXT"), ("gps_time", "TEXT"), ("time_tag", "TEXT"))
#: The columns a trip's clocks are solved from (:mod:`geoloc.trips`); a row stored before they
#: existed has them NULL until ``geoloc index`` reads its EXIF again (``meta.trip_columns``).
TRIP_COLUMNS = ("camera_make", "camera_model", "camera_serial", "gps_time", "time_tag")
ALL_COLUMNS = COLUMNS + tuple(name for name, _ in ADDED_COLUMNS)


@dataclass
class PhotoRecord:
    """One photo as stored: where the file is, how to tell it changed, where it was taken."""

    path: Path
    size: int
    mtime_ns: int
    sha256: Optional[str] = None
    lat: Optional[float] = None
    lon: Optional[float] = None
    alt: Optional[float] = None
    taken_at: Optional[str] = None
    gps_accuracy_m: Optional[float] = None
    width: Optional[int] = None
    height: Optional[int] = None
    #: Row in descriptors.f32; assigned by ``Database.add_batch``.
    row: int = -1
    #: Where the position came from: "exif", "xmp", "takeout" (a sidecar), None without one.
    gps_source: Optional[str] = None
    #: Fingerprint of the sidecars next to a photo without an EXIF position (names, sizes,
    #: times): a later run that finds another reads the position again, without the network.
    sidecar_key: Optional[str] = None
    #: The camera body as EXIF names it, and the UTC time of the photo's own GPS fix.
    camera_make: Optional[str] = None
    camera_model: Optional[str] = None
    camera_serial: Optional[str] = None
    gps_time: Optional[str] = None
    #: Which EXIF tag ``taken_at`` came from (``geoloc.photos.PhotoMeta.time_tag``).
    time_tag: Optional[str] = None

    @property
    def located(self) -> bool:
        return self.lat is not None and self.lon is not None

    def take_position(self, meta: Any) -> None:
        """The position fields from a photo's metadata (a ``geoloc.photos.PhotoMeta``): the
        position with its altitude, accuracy and source, all ``None`` without a usable one,
        and the fingerprint of the sidecars that were looked at. The one place this mapping
        is made, for indexing, repairs and sidecar updates alike."""
        located = bool(getattr(meta, "located", False))
        self.lat = meta.lat if located else None
        self.lon = meta.lon if located else None
        self.alt = getattr(meta, "alt", None) if located else None
        self.gps_accuracy_m = getattr(meta, "gps_accuracy_m", None) if located else None
        self.gps_source = getattr(meta, "gps_source", None) if located else None
        self.sidecar_key = getattr(meta, "sidecar_key", None)

    @classmethod
    def of_photo(cls, item: Any) -> "PhotoRecord":
        """The record of a decoded photo (:class:`geoloc.descriptors.extract` gives them): its
        file, size, time, camera and position (EXIF, else embedded XMP, else a sidecar)."""
        record = cls(path=item.path, size=item.size, mtime_ns=item.mtime_ns, sha256=item.sha256,
                     width=item.width, height=item.height)
        record.take_time(item.meta)
        record.take_position(item.meta)
        return record

    def take_time(self, meta: Any) -> None:
        """The capture time, camera and GPS time from a photo's metadata (trips' evidence)."""
        self.taken_at = getattr(meta, "taken_at", None)
        for name in TRIP_COLUMNS:
            setattr(self, name, getattr(meta, name, None))

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sidecar_key"}
        data.update(json_path_fields(self.path))
        data["located"] = self.located
        return data


def path_key(path: Path | str) -> str | bytes:
    """How a path is stored: text when it is valid UTF-8, else its raw bytes (so it round-trips)."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text)


def path_from_key(value: str | bytes) -> Path:
    return Path(os.fsdecode(value) if isinstance(value, bytes) else value)


def record_from_row(row: sqlite3.Row | tuple, columns: tuple[str, ...] = ALL_COLUMNS) -> PhotoRecord:
    """A record from a row of ``columns``.

    A position stored without its source (by geoloc before sidecars were read, or in a
    database without the column) came from EXIF: that was the only source then.
    """
    values = dict(zip(columns, row))
    values["path"] = path_from_key(values["path"])
    record = PhotoRecord(**values)
    if record.gps_source is None and record.located:
        record.gps_source = "exif"
    return record
