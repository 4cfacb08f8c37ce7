"""One photo as the database stores it, and how its path is kept whatever bytes it holds."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

from geoloc.files import json_path

COLUMNS = (
    "path", "size", "mtime_ns", "sha256", "lat", "lon", "alt", "taken_at",
    "gps_accuracy_m", "width", "height", "row",
)


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

    @property
    def located(self) -> bool:
        return self.lat is not None and self.lon is not None

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["path"] = json_path(self.path)
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


def record_from_row(row: sqlite3.Row | tuple) -> PhotoRecord:
    values = dict(zip(COLUMNS, row))
    values["path"] = path_from_key(values["path"])
    return PhotoRecord(**values)
