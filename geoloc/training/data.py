"""The photos a fine-tuning run learns from: GPS-tagged files, from folders or from a database."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from geoloc.errors import PhotoError


@dataclass(frozen=True)
class TrainingPhoto:
    path: Path
    lat: float
    lon: float


def photos_from_paths(
    paths: Iterable[str | os.PathLike], on_error: Callable[[PhotoError], None]
) -> tuple[list[TrainingPhoto], int]:
    """The photos under ``paths`` that carry a usable GPS position, and how many did not."""
    from geoloc.photos import discover, read_meta

    located: list[TrainingPhoto] = []
    unlocated = 0
    seen: set[str] = set()
    for path in discover(paths, on_error):
        key = os.path.realpath(path)
        if key in seen:
            continue
        seen.add(key)
        try:
            meta = read_meta(path)
        except PhotoError as exc:
            on_error(exc)
            continue
        if meta.located:
            located.append(TrainingPhoto(Path(key), float(meta.lat), float(meta.lon)))
        else:
            unlocated += 1
    return located, unlocated


def photos_from_database(db: Path, on_error: Callable[[PhotoError], None]) -> tuple[list[TrainingPhoto], int]:
    """The located photos of a database whose files are still there."""
    from geoloc.database import Database

    with Database.open(Path(db)) as database:
        records = database.photos()
    located: list[TrainingPhoto] = []
    unlocated = 0
    for record in records:
        if not record.located:
            unlocated += 1
            continue
        if not Path(record.path).is_file():
            on_error(PhotoError(record.path, "in the database but no longer on disk; skipped"))
            continue
        located.append(TrainingPhoto(Path(record.path), float(record.lat), float(record.lon)))
    return located, unlocated


def unique(photos: Iterable[TrainingPhoto]) -> list[TrainingPhoto]:
    """Each file once, in first-seen order (a folder given twice is not twice the data)."""
    seen: set[str] = set()
    result = []
    for p in photos:
        key = str(p.path)
        if key not in seen:
            seen.add(key)
            result.append(p)
    return result
