"""How tests watch a database another process is writing: as a second program would."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def committed(db: Path) -> int:
    """Photos committed so far, read through read-only SQLite (-1 while the file is not there
    or not readable yet)."""
    try:
        conn = sqlite3.connect(f"file:{db / 'photos.sqlite'}?mode=ro", uri=True, timeout=1)
        try:
            return conn.execute("SELECT COUNT(*) FROM photos").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return -1
