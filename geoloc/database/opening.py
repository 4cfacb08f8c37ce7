"""Opening a database folder (for reading, or for writing under its lock) and creating one.

Opening is where damage is found before anything is read or written: the manifest is compared
with its copy, a writer recovers what a crash left (:mod:`geoloc.database.recovery`), and the
files are checked against each other. Creating refuses any folder that already holds data.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from geoloc.database.layout import DESCRIPTORS, FORMAT_VERSION, MANIFEST, MAPS, ROWS, SQLITE, TRIP_COLUMNS_READ
from geoloc.database.lock import WriteLock, lock_holder
from geoloc.database.manifest import load_manifest, write_manifest
from geoloc.database.recovery import connect_or_rebuild, recover, refuse_non_empty
from geoloc.database.sqlite import connect
from geoloc.errors import DatabaseError
from geoloc.files import display_path


def open_database(cls, path: Path, *, write: bool, repair: bool, allow_damage: bool):
    """What :meth:`Database.open` does (its docstring says what each flag means); ``cls`` is
    the class to make."""
    path = Path(path).expanduser().absolute()
    if not cls.exists(path):
        writer = lock_holder(path)
        if writer:
            raise DatabaseError(
                f"database {display_path(path)} is being created by another geoloc process ({writer}); "
                "run again when it has finished")
        raise DatabaseError(f"no geoloc database at {display_path(path)} (run `geoloc index` first)")
    lock = None
    if write:
        lock = WriteLock(path)
        lock.acquire()
    try:
        if repair and write:
            conn = connect_or_rebuild(path)
        else:
            conn = connect(path, write=write)
        db = cls(path, conn, write, lock)
        try:
            load_manifest(db, repair=repair and write)
            if write:
                recover(db, repair=repair)
            db.read_columns()
            problems = db.structural_problems()
            if problems and not (allow_damage or repair):  # a repair re-extracts what is missing
                raise db.damage(problems)
            db.notes = db.mirror_problems()
            if write and db.notes and not repair:
                raise db.damage(db.notes)
            db.rebuilt = bool(db.meta("rebuilt", 0))
            if db.rebuilt:
                db.repaired.insert(0, f"{SQLITE} (from {MANIFEST} and {ROWS})")
        except BaseException:
            db.close_files()
            conn.close()
            raise
        return db
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def create_database(cls, path: Path, manifest: dict):
    """What :meth:`Database.create` does; ``cls`` is the class to make."""
    path = Path(path).expanduser().absolute()
    for key in ("model", "dim"):
        if key not in manifest:
            raise ValueError(f"manifest needs {key!r}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseError(f"cannot create database {display_path(path)}: {exc.strerror or exc}") from None
    lock = WriteLock(path)
    lock.acquire()
    try:
        if cls.exists(path):
            lock.release()
            raise DatabaseError(f"a database already exists at {display_path(path)}")
        refuse_non_empty(path, lock)
        full = {"format": FORMAT_VERSION, "dtype": "float32", "geoloc_version": _geoloc_version(),
                "created": utc_now(), "revision": 1, **manifest}
        full["dim"] = int(full["dim"])
        conn = connect(path, write=True, create=True)
        db = cls(path, conn, True, lock)
        db.set_manifest(full)
        with db.transaction():
            for key, value in (("next_row", 0), ("generation", 0), (TRIP_COLUMNS_READ, 1)):
                conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('manifest', ?)", (json.dumps(full, sort_keys=True),))
        for name in (DESCRIPTORS, ROWS) + ((MAPS,) if db.maps else ()):
            open(path / name, "ab").close()
        write_manifest(path, full)
        return db
    except OSError as exc:
        lock.release()
        raise DatabaseError(f"cannot create database {display_path(path)}: {exc.strerror or exc}") from None
    except BaseException:
        lock.release()
        raise


def utc_now() -> str:
    """Now, in UTC, to the second: when a database was created or a photo indexed."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _geoloc_version() -> str:
    from geoloc import __version__

    return __version__
