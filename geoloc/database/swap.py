"""Replacing a whole database folder by a rebuilt one, so that a crash never leaves neither.

A vocabulary refit (:mod:`geoloc.refit`) computes every descriptor again: the new database is
built beside the old one (``.NAME.refit``, hidden, so indexing a folder that holds the database
does not read it as photos), and only a complete one takes the old one's place. The old one
stays usable, and untouched, until then. The steps and what a crash after each leaves:

1. ``.NAME.refit/REFIT_DONE`` written and fsynced: the rebuilt folder is complete. A crash
   here leaves both; the next writer of NAME finishes the swap (:func:`finish_pending`).
2. ``NAME`` renamed to ``.NAME.old``. A crash here leaves no ``NAME``: whoever opens it next
   (reader or writer) moves the complete rebuilt folder into place (:func:`settle`).
3. ``.NAME.refit`` renamed to ``NAME``.
4. ``.NAME.old`` removed (a crash before: the next writer removes it).

Renaming a folder keeps the files held open in it, so a reader that opened the old database
keeps reading it, whole, until it closes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from geoloc.files import fsync_dir

DONE = "REFIT_DONE"
FAILED = "SWAP_FAILED"


def real(db: Path) -> Path:
    """The folder itself: a database reached through a symbolic link is swapped where it
    lives, and the link keeps pointing at it."""
    return Path(os.path.realpath(db))


def building(db: Path) -> Path:
    """Where the rebuilt database is made."""
    db = real(db)
    return db.parent / f".{db.name}.refit"


def retired(db: Path) -> Path:
    """Where the old database waits between the two renames."""
    db = real(db)
    return db.parent / f".{db.name}.old"


def is_complete(folder: Path) -> bool:
    return (folder / DONE).is_file()


def mark_complete(folder: Path) -> None:
    """Step 1: say, durably, that ``folder`` is a whole database ready to take the place."""
    fd = os.open(folder / DONE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(folder)


def swap(db: Path) -> None:
    """Steps 2–4, by the writer that holds ``db``'s lock (the lock's file moves with the folder,
    so no other writer can start on the old one meanwhile)."""
    db = real(db)
    new, old = building(db), retired(db)
    if old.exists():
        shutil.rmtree(old)
    os.rename(db, old)  # OSError (a mount point, say): nothing moved yet
    try:
        os.rename(new, db)
    except FileNotFoundError:
        if not db.is_dir():  # not a reader's settle() that moved it in first
            os.rename(old, db)
            raise
    _forget_marker(db)
    fsync_dir(db.parent)
    shutil.rmtree(old, ignore_errors=True)


def settle(db: Path) -> None:
    """A crash between steps 2 and 3 left no ``db``: put the complete rebuilt folder there.
    Safe for any process (a reader on a read-only disk just leaves it as it is)."""
    if os.path.lexists(db) and os.path.exists(db):
        return
    db = real(db)
    if db.exists():
        return
    new = building(db)
    try:
        if is_complete(new):
            os.rename(new, db)
            _forget_marker(db)
        elif retired(db).is_dir():  # not reached by the steps above, but never lose the old one
            os.rename(retired(db), db)
        else:
            return
        fsync_dir(db.parent)
    except OSError:
        pass


def finish_pending(db: Path) -> bool:
    """For the writer of ``db``, holding its lock, before it changes anything: a complete rebuilt
    folder left by a crash takes the place (step 1 done, step 2 not), and a retired one left
    after step 3 is removed. True when a swap was finished."""
    if retired(db).is_dir():
        shutil.rmtree(retired(db), ignore_errors=True)
    db = real(db)
    if is_complete(building(db)):
        swap(db)
        return True
    return False


def unmark(folder: Path, reason: str) -> None:
    """A rebuilt folder that could not be swapped in stops being "ready", and says why: later
    runs go on with the old database instead of failing the same way each time."""
    _forget_marker(folder)
    try:
        (folder / FAILED).write_text(reason + "\n", encoding="utf-8")
    except OSError:
        pass


def failed_swap(folder: Path) -> str | None:
    """Why an earlier swap of this rebuilt folder failed, or None."""
    try:
        return (folder / FAILED).read_text(encoding="utf-8").strip() or "unknown reason"
    except OSError:
        return None


def clear_failure(folder: Path) -> None:
    try:
        os.unlink(folder / FAILED)
    except OSError:
        pass


def _forget_marker(db: Path) -> None:
    try:
        os.unlink(db / DONE)
    except OSError:
        pass
