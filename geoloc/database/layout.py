"""The files of a database folder, and the numbers that shape them.

Authoritative state lives in ``photos.sqlite`` (photos, row counter, and copies of the manifest
and vocabulary), ``descriptors.f32`` (the descriptor rows) and ``descriptors.idx`` (one entry per
row: the photo's content hash and the row's checksum). ``manifest.json`` and
``vocabulary.safetensors`` are their readable mirrors. Each piece can be checked against the
others, and each can be rebuilt from the others when lost (docs/database.md).
"""

from __future__ import annotations

MANIFEST = "manifest.json"
SQLITE = "photos.sqlite"
DESCRIPTORS = "descriptors.f32"
ROWS = "descriptors.idx"
COMPACTING = "descriptors.f32.compact"
ROWS_COMPACTING = "descriptors.idx.compact"
MAPS = "maps.i8"
MAPS_COMPACTING = "maps.i8.compact"
VOCABULARY = "vocabulary.safetensors"
LOCK = "lock"
#: Sampled local features of an interrupted vocabulary fit, so that a re-run resumes it.
FIT_CACHE = ".vocabulary-fit"
#: Where ``--repair`` moves files it cannot use, instead of deleting them.
DAMAGED = "damaged"

#: Everything a database folder may hold; anything else means it is not one.
DATA_FILES = (SQLITE, SQLITE + "-wal", SQLITE + "-shm", SQLITE + "-journal", DESCRIPTORS, ROWS, MAPS,
              COMPACTING, ROWS_COMPACTING, MAPS_COMPACTING, VOCABULARY)

#: 1: geoloc 0.1.0 (no row index, no copies in SQLite); 2: checksums and copies.
FORMAT_VERSION = 2
#: Rewrite the descriptor file once dead rows (replaced or removed photos) exceed this fraction.
COMPACT_FRACTION = 0.25
#: ...but never bother for fewer dead rows than this.
COMPACT_MIN_ROWS = 256
#: Verify every stored descriptor against its checksum when a database opens, up to this many
#: bytes (about a second of reading); above it, the rows a search returns are verified instead.
VERIFY_ALL_BYTES = 4 << 30
#: SQLite's own structure check on open, for files up to this size (larger: ``geoloc check``).
QUICK_CHECK_BYTES = 64 << 20


def repair_hint(db: str) -> str:
    return (f"run `geoloc index PHOTOS... --repair --db {db}` to rebuild it from what survives "
            f"(`geoloc check --db {db}` lists every problem)")
