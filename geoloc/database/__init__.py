"""The photo database: a folder of files that checks itself (see docs/database.md).

:mod:`~geoloc.database.store` is the database itself; :mod:`~geoloc.database.layout` names its
files, :mod:`~geoloc.database.records` its photo records, :mod:`~geoloc.database.sqlite` opens
``photos.sqlite``, :mod:`~geoloc.database.rows` reads and writes the row index, and
:mod:`~geoloc.database.integrity` is ``geoloc check``.
"""

from __future__ import annotations

from geoloc.database.layout import (
    COMPACTING,
    DESCRIPTORS,
    FORMAT_VERSION,
    MANIFEST,
    ROWS,
    SQLITE,
    VOCABULARY,
)
from geoloc.database.records import PhotoRecord
from geoloc.database.store import Database

__all__ = ["COMPACTING", "DESCRIPTORS", "FORMAT_VERSION", "MANIFEST", "ROWS", "SQLITE", "VOCABULARY",
           "Database", "PhotoRecord"]
