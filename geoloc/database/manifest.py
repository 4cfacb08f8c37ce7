"""The manifest: which model and settings made a database's descriptors.

Its authoritative copy lives in ``photos.sqlite`` (table ``meta``, written in the same
transaction as what it describes); ``manifest.json`` is the readable mirror, written after. A
``revision`` counter in both tells an interrupted update (the mirror one behind) from damage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from geoloc.database.layout import FORMAT_VERSION, MANIFEST, SQLITE
from geoloc.errors import DatabaseError
from geoloc.files import atomic_write, display_path


def load_manifest(db, repair: bool) -> None:
    """The manifest from photos.sqlite's copy (authoritative), compared with manifest.json.

    A manifest.json one revision behind its copy is an update that was interrupted between
    its two writes: a writer finishes it. Any other difference is damage to a mirror:
    readers carry on with the copy (see ``notes``), writers refuse, ``--repair`` rewrites it.
    """
    text = db.meta("manifest")
    copy = parse_manifest(text) if text is not None else None
    file, file_problem = read_manifest_file(db.path)
    db.manifest_behind = False
    db.manifest_problem = None
    if text is not None and copy is None:  # the copy itself is garbage: the file is all there is
        if file is None:
            raise db.damage([f"{SQLITE}'s copy of the manifest and {MANIFEST} are both unreadable"])
        check_format(db.path, file)
        db.set_manifest(file)
        if repair:
            with db.transaction():
                db.conn.execute("UPDATE meta SET value = ? WHERE key = 'manifest'",
                                   (json.dumps(file, sort_keys=True),))
            db.repaired.append(f"{SQLITE}'s copy of the manifest")
        else:
            db.manifest_problem = f"{SQLITE}'s copy of the manifest is unreadable"
        return
    manifest = copy or file
    if manifest is None:
        raise db.damage([file_problem or f"{MANIFEST} is missing"])
    check_format(db.path, manifest)
    db.set_manifest(manifest)
    if copy is None or file == copy:  # (no copy: a geoloc 0.1.0 database, migrated by writers)
        return
    db.manifest_behind = file is not None and int(file.get("revision", 0)) == int(copy.get("revision", 0)) - 1
    if db.manifest_behind or repair:
        if db.write:
            write_manifest(db.path, copy)
            if not db.manifest_behind:
                db.repaired.append(MANIFEST)
    else:
        db.manifest_problem = file_problem or f"{MANIFEST} does not match {SQLITE}'s copy of it"


def parse_manifest(text: str) -> Optional[dict]:
    try:
        manifest = json.loads(text)
    except (TypeError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and "model" in manifest and "dim" in manifest else None


def read_manifest_file(path: Path) -> tuple[Optional[dict], Optional[str]]:
    try:
        text = (path / MANIFEST).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, f"{MANIFEST} is missing"
    except UnicodeDecodeError:
        return None, f"{MANIFEST} is damaged (not a manifest)"
    except OSError as exc:
        return None, f"{MANIFEST} is unreadable ({exc.strerror or exc})"
    manifest = parse_manifest(text)
    return manifest, (None if manifest is not None else f"{MANIFEST} is damaged (not a manifest)")


def check_format(path: Path, manifest: dict) -> None:
    if int(manifest.get("format", 1)) > FORMAT_VERSION:
        raise DatabaseError(
            f"database {display_path(path)} was written by a newer geoloc "
            f"({manifest.get('geoloc_version', '?')}); upgrade geoloc to use it"
        )


def write_manifest(path: Path, manifest: dict) -> None:
    atomic_write(path / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
