"""The vocabulary of a database (its fitted NetVLAD centroids) and its mirror file.

Like the manifest, its authoritative copy lives in ``photos.sqlite`` (table ``meta``, written in
the same transaction as the manifest's record of it); ``vocabulary.safetensors`` is the mirror,
written after. The manifest records the mirror's hash, so a mirror that no longer matches is told
from one an interrupted write left behind.
"""

from __future__ import annotations

import hashlib
import json
from typing import Optional

from geoloc.database.layout import SQLITE, VOCABULARY
from geoloc.database.manifest import write_manifest
from geoloc.files import atomic_write


def has_vocabulary(db) -> bool:
    return db.meta("vocabulary") is not None or (db.path / VOCABULARY).is_file()


def load_vocabulary(db) -> Optional[dict]:
    """The fitted vocabulary, from its copy in photos.sqlite (the file is its mirror)."""
    from safetensors.torch import load

    blob = db.meta("vocabulary")
    if blob is None:
        blob = file_bytes(db)
    if blob is None:
        return None
    try:
        return load(bytes(blob))
    except Exception as exc:
        raise db.damage([f"the vocabulary cannot be read ({exc})"]) from None


def save_vocabulary(db, state: dict, manifest_changes: Optional[dict] = None) -> None:
    """Store a fitted vocabulary and the manifest's record of it in one SQLite transaction,
    then the two mirror files (a writer finishes them if a crash comes in between)."""
    db.require_write()
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in state.items()})
    manifest = {**db.manifest, **(manifest_changes or {}),
                "vocabulary_file_sha256": hashlib.sha256(data).hexdigest(),
                "revision": int(db.manifest.get("revision", 0)) + 1}
    with db.transaction():
        db.conn.execute("INSERT OR REPLACE INTO meta VALUES ('vocabulary', ?)", (data,))
        db.conn.execute("INSERT OR REPLACE INTO meta VALUES ('manifest', ?)",
                        (json.dumps(manifest, sort_keys=True),))
    atomic_write(db.path / VOCABULARY, data)
    write_manifest(db.path, manifest)
    db.manifest = manifest


def file_bytes(db) -> Optional[bytes]:
    try:
        return (db.path / VOCABULARY).read_bytes()
    except OSError:
        return None


def from_file(db) -> Optional[bytes]:
    """The mirror file's bytes when they match what the manifest recorded of them."""
    data = file_bytes(db)
    if data is None:
        return None
    recorded = db.manifest.get("vocabulary_file_sha256")
    if recorded and hashlib.sha256(data).hexdigest() != recorded:
        return None
    return data


def mirror_problem(db) -> Optional[str]:
    """What is wrong with the mirror file while photos.sqlite's copy is intact, or None."""
    blob = db.meta("vocabulary")
    if blob is None:
        return None
    data = file_bytes(db)
    if data is None:
        return f"{VOCABULARY} is missing ({SQLITE} holds a copy)"
    if data != bytes(blob):
        return f"{VOCABULARY} does not match {SQLITE}'s copy of it"
    return None
