"""Replacing a database's own files by a rebuilt set, so that a crash never leaves neither, and
nothing of the user's in or beside the folder is lost.

A vocabulary refit (:mod:`geoloc.indexing.refit`) computes every descriptor again: the new database is
built beside the old one (``.NAME.refit``, hidden, so indexing a folder that holds the database
does not read it as photos, and marked ``REFIT_BUILDING``), and only a complete one takes the old
one's place. The old one stays usable, and untouched, until then. The steps and what a crash
after each leaves:

1. ``.NAME.refit/REFIT_DONE`` written and fsynced: the rebuilt folder is complete. A crash
   here leaves both; the next writer of NAME finishes the swap (:func:`finish_pending`).
2. ``NAME/REFIT_RETIRED`` written, then ``NAME`` renamed to ``.NAME.old``. A crash here leaves
   no ``NAME``: whoever opens it next (reader or writer) moves the complete rebuilt folder into
   place (:func:`settle`).
3. ``.NAME.refit`` renamed to ``NAME``.
4. What ``.NAME.old`` holds that is not geoloc's (the user's notes, a map saved there, photos
   kept there) goes back into ``NAME``, under the same names; geoloc's own old files are
   removed, and the emptied ``.NAME.old`` with them. A crash before: the next command finishes it.

Folders are recognised by the marks only geoloc writes: a folder of the user's that happens to be
called ``.NAME.old`` or ``.NAME.refit`` is never removed, emptied or moved into place; a refit
waits, and says so, while one is in the way (:func:`obstacle`). Renaming a folder keeps the files
held open in it, so a reader that opened the old database keeps reading it, whole, until it closes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from geoloc.database.layout import (
    KEPT_ACROSS_REFIT, MANIFEST, REFIT_BUILDING, REFIT_DONE, REFIT_RETIRED, SWAP_FAILED, is_own_name)
from geoloc.files import display_path, fsync_dir

DONE = REFIT_DONE
FAILED = SWAP_FAILED
BUILDING = REFIT_BUILDING
RETIRED = REFIT_RETIRED


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
    return (folder / DONE).is_file() and is_ours_building(folder)


def is_ours_building(folder: Path) -> bool:
    """A rebuilt folder geoloc made: marked when it was made, or (made by a geoloc before the
    mark) holding nothing but a database's own files."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    if (folder / BUILDING).is_file():
        return True
    try:
        names = os.listdir(folder)
    except OSError:
        return False
    return MANIFEST in names and all(is_own_name(n) for n in names)


def is_ours_retired(folder: Path) -> bool:
    """An old database that step 2 set aside (marked just before its rename)."""
    return folder.is_dir() and not folder.is_symlink() and (folder / RETIRED).is_file()


def start_building(folder: Path) -> None:
    """Make the folder a rebuilt database goes into, with the mark that says it is geoloc's."""
    folder.mkdir(exist_ok=True)
    _write_mark(folder / BUILDING)


def obstacle(db: Path) -> str | None:
    """A folder beside ``db`` that bears a refit's name but is not geoloc's, named in a line
    that says what to do; None when a refit may go ahead."""
    for folder in (building(db), retired(db)):
        if not os.path.lexists(folder):
            continue
        if folder.is_dir() and not folder.is_symlink() and not any(os.scandir(folder)):
            try:  # empty (a cleanup killed at its last step, or anyone's): nothing to lose
                os.rmdir(folder)
                continue
            except OSError:
                pass
        ours = is_ours_building(folder) if folder == building(db) else is_ours_retired(folder)
        if not ours:
            return (f"{display_path(folder)} is in the way: geoloc did not make it and leaves it alone; "
                    "rename or move it to let the refit go ahead")
    return None


def foreign_entries(folder: Path) -> list[str]:
    """What a database folder holds that geoloc did not write there, sorted."""
    try:
        return sorted(n for n in os.listdir(folder) if not is_own_name(n))
    except OSError:
        return []


def remove_own(folder: Path, keep_mark: bool = False) -> list[str]:
    """Remove geoloc's own files from ``folder``, and the folder once empty. What is not
    geoloc's stays; returned (sorted), so the caller can say so. ``keep_mark``: the marks that
    say the folder is geoloc's stay too."""
    left = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    marks = (BUILDING, RETIRED, DONE)
    # The marks go last: a kill half-way leaves a folder still known as geoloc's, to finish later.
    entries.sort(key=lambda e: e.name in marks)
    for entry in entries:
        if not is_own_name(entry.name):
            left.append(entry.name)
            continue
        if keep_mark and entry.name in marks:
            continue
        _remove(Path(entry.path))
    try:
        os.rmdir(folder)
    except OSError:
        pass
    return sorted(left)


def mark_complete(folder: Path) -> None:
    """Step 1: say, durably, that ``folder`` is a whole database ready to take the place."""
    _write_mark(folder / DONE)


def swap(db: Path) -> list[str]:
    """Steps 2–4, by the writer that holds ``db``'s lock (the lock's file moves with the folder,
    so no other writer can start on the old one meanwhile). Returns what could not go back
    into ``db`` (a name taken there meanwhile): it stays in ``.NAME.old``."""
    db = real(db)
    new, old = building(db), retired(db)
    if os.path.lexists(old):
        if not is_ours_retired(old):
            raise OSError(17, f"{display_path(old)} is in the way (geoloc did not make it)")
        give_back(db)
        if os.path.lexists(old):
            raise OSError(17, f"{display_path(old)} still holds files that could not go back")
    _write_mark(db / RETIRED)
    os.rename(db, old)  # OSError (a mount point, say): nothing moved yet
    try:
        os.rename(new, db)
    except FileNotFoundError:
        if not db.is_dir():  # not a reader's settle() that moved it in first
            os.rename(old, db)
            _forget(db / RETIRED)
            raise
    _forget(db / DONE)
    _forget(db / BUILDING)
    fsync_dir(db.parent)
    return give_back(db)


def give_back(db: Path) -> list[str]:
    """Step 4: the user's files in the retired folder go back into ``db``; geoloc's old files
    go, and the folder with them once empty. Returns what stayed (a name taken in ``db``)."""
    db = real(db)
    old = retired(db)
    if not is_ours_retired(old) or not db.is_dir():
        return []
    _move_back(db)
    fsync_dir(db)
    stayed = foreign_entries(old)  # a name taken in ``db`` meanwhile
    # With something left, the mark stays: the folder is still geoloc's leftover, to finish later.
    remove_own(old, keep_mark=bool(stayed))
    fsync_dir(db.parent)
    return stayed


def settle(db: Path) -> None:
    """A crash between steps 2 and 3 left no ``db``: put the complete rebuilt folder there (or,
    never reached by the steps above, the old one back). A crash before step 4 ended left the
    user's files in ``.NAME.old``: they go back. Safe for any process (a reader on a read-only
    disk just leaves it as it is)."""
    if os.path.lexists(db) and os.path.exists(db):
        if os.path.lexists(retired(db)):
            try:
                _move_back(db)
            except OSError:
                pass
        return
    db = real(db)
    if db.exists():
        return
    new = building(db)
    try:
        if is_complete(new):
            os.rename(new, db)
            _forget(db / DONE)
            _forget(db / BUILDING)
            fsync_dir(db.parent)
            _move_back(db)  # the user's files, still in the old folder
        elif is_ours_retired(retired(db)):
            os.rename(retired(db), db)
            _forget(db / RETIRED)
        else:
            return
        fsync_dir(db.parent)
    except OSError:
        pass


def _move_back(db: Path) -> None:
    """The part of step 4 a reader may do without the lock: only moves, each one atomic. What
    is not geoloc's, and the folders kept across a refit, go back into ``db`` where the name is
    free."""
    db = real(db)
    old = retired(db)
    if not is_ours_retired(old):
        return
    for name in foreign_entries(old) + sorted(KEPT_ACROSS_REFIT):
        if os.path.lexists(old / name) and not os.path.lexists(db / name):
            try:
                os.rename(old / name, db / name)
            except OSError:
                pass


def finish_pending(db: Path) -> bool:
    """For the writer of ``db``, holding its lock, before it changes anything: a complete rebuilt
    folder left by a crash takes the place (step 1 done, step 2 not), and a retired one left
    after step 3 gives the user's files back and goes. True when a swap was finished."""
    db = real(db)
    _forget(db / RETIRED)  # a crash between step 2's mark and its rename: the folder stayed in place
    if is_ours_retired(retired(db)):
        give_back(db)
    if is_complete(building(db)):
        swap(db)
        return True
    return False


def unmark(folder: Path, reason: str) -> None:
    """A rebuilt folder that could not be swapped in stops being "ready", and says why: later
    runs go on with the old database instead of failing the same way each time."""
    _forget(folder / DONE)
    try:
        (folder / FAILED).write_text(reason + "\n", encoding="utf-8")
    except OSError:
        pass


def failed_swap(folder: Path) -> str | None:
    """Why an earlier swap of this rebuilt folder failed, or None."""
    if not is_ours_building(folder):
        return None
    try:
        return (folder / FAILED).read_text(encoding="utf-8").strip() or "unknown reason"
    except OSError:
        return None


def clear_failure(folder: Path) -> None:
    _forget(folder / FAILED)


def _write_mark(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"geoloc\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _forget(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
