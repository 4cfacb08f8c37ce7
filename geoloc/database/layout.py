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

#: The vocabulary refit's marks (:mod:`geoloc.database.swap`): a rebuilt folder being built, a
#: complete one, the old one on its way out, and why a swap failed. Each is a file only geoloc
#: writes, so that a folder of the user's that happens to bear a refit's name is never taken
#: for one (and never removed or moved into place).
REFIT_BUILDING = "REFIT_BUILDING"
REFIT_DONE = "REFIT_DONE"
REFIT_RETIRED = "REFIT_RETIRED"
SWAP_FAILED = "SWAP_FAILED"
#: The compressed search index's folder (:mod:`geoloc.retrieval.compressed`).
SEARCH = "search"
#: Copies of the GPS tracks ``geoloc index --track`` keeps with the database (:mod:`geoloc.trips`).
TRACKS = "tracks"
#: ``geoloc review``'s decisions (:mod:`geoloc.review.decisions`): kept with the database, across refits.
REVIEW = "review"

#: Every name geoloc itself puts in a database folder. A refit replaces only these; anything else
#: (the user's notes, a map saved there, photos kept there) stays where it is.
OWN_NAMES = frozenset(DATA_FILES + (MANIFEST, LOCK, FIT_CACHE, DAMAGED, SEARCH, TRACKS, REVIEW, REFIT_BUILDING, REFIT_DONE,
                                    REFIT_RETIRED, SWAP_FAILED))
#: Geoloc's own folders in a database.
_OWN_FOLDERS = frozenset({FIT_CACHE, DAMAGED, SEARCH, TRACKS, REVIEW})

#: What a refit keeps rather than drops with the old descriptors: every folder of those names
#: (files ``--repair`` set aside stay set aside, the kept tracks stay, a stale search cache is
#: rebuilt when next needed), so that a folder of the user's that bears such a name is never
#: removed either.
KEPT_ACROSS_REFIT = _OWN_FOLDERS


def is_own_name(name: str) -> bool:
    """A name geoloc wrote in a database folder: one of :data:`OWN_NAMES`, or a temporary file
    of geoloc's crash-safe writes (``.geoloc-….tmp``, and the longer ``.NAME.….tmp`` of earlier
    versions) left by a crash."""
    if name in OWN_NAMES:
        return True
    if name.startswith(".geoloc-") and name.endswith(".tmp"):
        return True
    if name.startswith(".") and name.endswith(".tmp"):
        inner = name[1:].rsplit(".", 2)[0]
        return inner in OWN_NAMES and inner not in _OWN_FOLDERS and not inner.startswith("REFIT") \
            and inner != LOCK
    return False


#: The ``meta`` key set once every row's camera and GPS time were read (a new database: from the
#: start; an older one: by the first ``geoloc index`` that reads them, :func:`geoloc.database.writing.update_times`).
TRIP_COLUMNS_READ = "trip_columns_2"  # 2: with time_tag (a database read for "trip_columns" reads again once)

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
