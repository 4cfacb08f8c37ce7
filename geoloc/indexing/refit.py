"""Fitting a database's vocabulary again once the database has outgrown the photos it was fitted on.

A model such as ``lite0-vlad`` learns its NetVLAD vocabulary (the visual words every descriptor
is pooled around) from the first photos it indexes. Fitted on a handful, the words describe those
few scenes and little else: every later photo is pooled around them, and retrieval is worse for
good. So a vocabulary fitted on fewer than ``IndexConfig.provisional_vocabulary`` photos is
*provisional*: the run that fits it says so, and a later run refits it once the database holds
``REFIT_GROWTH`` times as many photos (or at once with ``--refit``). Each refit at least
quadruples the sample and the last comes before ``4 × provisional_vocabulary`` photos, so the
extra work is bounded for good: about 4/3 of that, some 270 photos at the defaults.

Every descriptor depends on the vocabulary, so a refit indexes every photo again, into a new
database built beside the old one (:mod:`geoloc.database.swap`), which takes the old one's place
only when complete. Until then the old database is untouched and answers queries; a refit cut
short resumes where it stopped (the new database is indexed incrementally like any other).
Nothing stored is dropped: a refit waits while a stored photo's file is missing or unreadable,
and says which.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

from geoloc.formatting import count
from geoloc.database import Database
from geoloc.database import layout, swap
from geoloc.descriptors.database_model import max_side_of
from geoloc.errors import GeolocError, RunInterrupted
from geoloc.files import display_path

#: A provisional vocabulary is refitted once the database holds this many times its photos.
REFIT_GROWTH = 4


@dataclass
class RefitPlan:
    #: Every photo the refitted database must hold: the stored ones and this run's new ones.
    photos: list[Path]
    #: Photos the old vocabulary was fitted on, and the sample the refit will use.
    before: int
    after: int
    #: Why: "requested" (``--refit``) or "grown".
    reason: str
    #: The photos already stored (all must be in the new database before it may replace the old).
    stored: set[Path]
    #: Stored photos ``--prune`` drops in this run.
    dropped: int = 0


@dataclass
class RefitReport:
    before: int
    after: int
    reason: str
    #: Photos whose descriptors were computed with the new vocabulary (all of them).
    reextracted: int = 0

    def to_json(self) -> dict:
        return {"vocabulary_photos_before": self.before, "vocabulary_photos": self.after,
                "reason": self.reason, "reextracted": self.reextracted}


def fitted_on(database: Database) -> Optional[int]:
    """How many photos the database's vocabulary was fitted on (None: it has none to refit)."""
    if not database.manifest.get("needs_vocabulary") or not database.has_vocabulary():
        return None
    value = database.manifest.get("vocabulary_photos")
    return int(value) if isinstance(value, (int, float)) else None


def is_provisional(photos: Optional[int], config) -> bool:
    """Fitted on fewer photos than a vocabulary needs, and fewer than a refit would sample (a
    ``--vocabulary-photos`` below the bar is the user's choice, not a reason to refit forever)."""
    return photos is not None and photos < min(config.provisional_vocabulary, config.vocabulary_photos)


def provisional_note(photos: int, config) -> str:
    """The line the run that fitted a provisional vocabulary prints. The fit took every photo
    it could read, so a refit right now would fit the same one: the line says when it pays."""
    return (f"the vocabulary was fitted on only {count(photos, 'photo')} "
            f"(a good one takes {min(config.provisional_vocabulary, config.vocabulary_photos)} or "
            f"more): geoloc fits it again, and indexes every photo again, once the database holds "
            f"{REFIT_GROWTH * photos}, or on `geoloc index --refit` once more photos are in")


def plan(database: Database, to_index: Sequence[Path], config, message,
         pruned: Callable[[Path], bool] = lambda path: False) -> Optional[RefitPlan]:
    """A refit to do in this run, or None. ``message`` hears why a due refit has to wait;
    ``pruned`` tells the stored photos that ``--prune`` drops in this run (the refitted
    database leaves them out, as the pruned one would).

    Raises :class:`GeolocError` when ``config.refit`` asks for one that cannot be done.
    """
    where = display_path(database.path)
    before = fitted_on(database)
    if before is None:
        if config.refit:
            why = ("its model learnt its vocabulary in training" if not database.manifest.get("needs_vocabulary")
                   else "it has no vocabulary yet (the first run fits one)")
            raise GeolocError(f"--refit: database {where} has no vocabulary to fit again: {why}")
        return None
    stored = [r.path for r in database.iter_photos()]
    dropped = {p for p in stored if pruned(p)}
    stored = [p for p in stored if p not in dropped]
    photos = sorted(set(stored) | set(to_index))
    after = min(len(photos), config.vocabulary_photos)
    if config.refit:
        reason = "requested"
    elif is_provisional(before, config) and len(photos) >= REFIT_GROWTH * before and after > before:
        reason = "grown"
    else:
        return None
    blocked = swap.obstacle(database.path) or _short_of_room(database)
    if blocked is not None:
        if config.refit:
            raise GeolocError(f"--refit: cannot fit the vocabulary of {where} again: {blocked}")
        message(f"the vocabulary of {where} is due to be fitted again on more photos, but {blocked}")
        return None
    failed = swap.failed_swap(swap.building(database.path))
    if failed is not None:
        if not config.refit:
            message(f"a database refitted on more photos waits in {display_path(swap.building(database.path))}: "
                    f"it could not take the place of {where} ({failed}); `geoloc index --refit` tries again")
            return None
        swap.clear_failure(swap.building(database.path))
    missing = [p for p in stored if not os.path.isfile(p)]
    if missing:
        text = (f"{len(missing)} stored photo{'s are' if len(missing) != 1 else ' is'} no longer on disk "
                f"(e.g. {display_path(missing[0])}), and every descriptor must be computed again; "
                "put them back, or drop them with `geoloc index PATH --prune`")
        if config.refit:
            raise GeolocError(f"--refit: cannot fit the vocabulary of {where} again: {text}")
        message(f"the vocabulary of {where} is due to be fitted again on more photos, but {text}")
        return None
    return RefitPlan(photos=photos, before=before, after=after, reason=reason, stored=set(stored),
                     dropped=len(dropped))


def prepare(database: Database, refit: RefitPlan, config):
    """Where the refitted database is built beside ``database`` (resumed when one left there
    fits this refit), and the indexing settings that build it: the database's own model and
    size, every photo indexed again (the indexer runs it, and hands what it did to
    :func:`take_place`)."""
    target = swap.building(database.path)
    if target.exists() and not _resumable(target, database, refit):
        left = swap.remove_own(target)  # plan() made sure the folder is geoloc's
        if left:
            raise GeolocError(f"{display_path(target)} holds files geoloc did not write ({display_path(left[0])}"
                              f"{' and more' if len(left) > 1 else ''}); move them out to let the refit go ahead")
    swap.start_building(target)
    return target, replace(config, model=database.manifest["model"], max_side=max_side_of(database), refit=False,
                           prune=False, repair=False, maps=bool(database.manifest.get("maps")))


def interrupted(database: Database) -> RunInterrupted:
    return RunInterrupted(
        f"interrupted while fitting the vocabulary again: {display_path(database.path)} is unchanged, "
        "and what the refit computed is kept; run the same command again to continue")


def abandoned(database: Database, exc: BaseException) -> str:
    """The line of a refit whose build failed (a full disk: a refit needs room for a second
    copy, …); the run goes on with the vocabulary it has."""
    reason = getattr(exc, "strerror", None) or str(exc)
    if _is_full_disk(exc):
        # A partial copy that cannot be finished only takes the room every later run needs.
        swap.remove_own(swap.building(database.path))
        reason += f" (the refit's partial copy in {display_path(swap.building(database.path))} was removed)"
    return (f"the vocabulary of {display_path(database.path)} was not fitted again: {reason}; this run "
            "goes on with the vocabulary it has, and the next run tries again")


def _is_full_disk(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc)


def full_disk_hint(db: Path, exc: BaseException) -> Optional[str]:
    """For a run stopped by a full disk: the unfinished refit copy beside the database (left by
    a kill, say), which is only taking room, named with what to delete; None when there is none."""
    folder = swap.building(db)
    if not _is_full_disk(exc) or not swap.is_ours_building(folder):
        return None
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return (f"an unfinished vocabulary refit in {display_path(folder)} takes {size / 1e6:,.1f} MB: delete that "
            f"folder to make room ({display_path(db)} does not need it; a later refit starts it again)")


def _short_of_room(database: Database) -> Optional[str]:
    """A refit writes a second copy of the database before the first goes: without room for it,
    it would stop half-way, its partial copy taking the room every later run needs."""
    need = sum(f.stat().st_size for f in Path(database.path).iterdir()
               if f.is_file() and f.name in _COPIED)
    try:
        free = shutil.disk_usage(swap.real(database.path).parent).free
    except OSError:
        return None
    if free >= need * 1.1 + (16 << 20):
        return None
    return (f"it needs about {need / 1e6:,.0f} MB free for a second copy of the database while it runs, "
            f"and {free / 1e6:,.0f} MB are free; make room and run `geoloc index --refit`")


#: The files a rebuilt database holds as many bytes of as the old one.
_COPIED = (layout.DESCRIPTORS, layout.ROWS, layout.MAPS, layout.SQLITE)


def _resumable(target: Path, database: Database, refit: RefitPlan) -> bool:
    """A rebuilt database left by a run cut short goes on, unless it was made for other settings,
    its vocabulary is fitted on fewer photos than this refit would sample (photos came since),
    or it holds photos the old database no longer has (they would come back)."""
    try:
        with Database.open(target) as other:
            same = (other.manifest.get("model") == database.manifest.get("model")
                    and other.manifest.get("preprocess") == database.manifest.get("preprocess"))
            fitted = fitted_on(other)
            wanted = set(refit.photos)
            return (same and (fitted is None or fitted >= refit.after)
                    and all(r.path in wanted for r in other.iter_photos()))
    except Exception:  # anything that is not a whole database of ours is rebuilt from nothing
        return False


def finish_pending_swap(db: Path) -> None:
    """A refit cut after its new database was complete: that one takes the place now, before
    this run reads the old one (under the old one's lock; a writer holding it finishes it)."""
    from geoloc.database.lock import WriteLock

    if not (swap.is_ours_retired(swap.retired(db)) or swap.is_complete(swap.building(db))) or not Database.exists(db):
        return
    lock = WriteLock(db)
    lock.acquire()
    try:
        swap.finish_pending(db)
    except OSError as exc:
        swap.unmark(swap.building(db), exc.strerror or str(exc))
        raise GeolocError(f"a finished vocabulary refit could not take the place of {display_path(db)} "
                          f"({exc.strerror or exc}); {display_path(db)} is unchanged") from None
    finally:
        lock.release()


@dataclass
class RefitOutcome:
    """What a refit did, for the indexing run to fold into its report."""

    #: Photos the new database could not read, ``(path, reason)`` (already shown: the build's
    #: progress is the run's).
    errors: list[tuple[Path, str]]
    #: The refitted database took the old one's place; False: the run goes on with the old one.
    swapped: bool = False
    #: This run's new or changed photos (indexed), the others (indexed again, not counted as new).
    indexed: int = 0
    unchanged: int = 0
    removed: int = 0
    total: int = 0
    located: int = 0
    unlocated: int = 0
    vocabulary_photos: Optional[int] = None
    report: Optional[RefitReport] = None


def take_place(database: Database, due: RefitPlan, to_index: list[Path], new, message) -> RefitOutcome:
    """The database built by the refit (``new``: its index report) replaces ``database``; not
    while a stored photo could not be read again: nothing stored is given up for a better
    vocabulary. ``message`` hears what the user should know."""
    where = display_path(database.path)
    outcome = RefitOutcome(errors=list(new.error_files))
    lost = [(p, reason) for p, reason in new.error_files if p in due.stored]
    if lost:
        message(f"the vocabulary was not fitted again: {count(len(lost), 'stored photo')} "
                f"could not be read again (e.g. {display_path(lost[0][0])}: {lost[0][1]}); the database keeps "
                "its vocabulary and every photo; the next run tries again")
        return outcome
    swap.mark_complete(swap.building(database.path))
    lock = database.close_keeping_lock()
    try:
        stayed = swap.swap(database.path)
    except OSError as exc:
        swap.unmark(swap.building(database.path), exc.strerror or str(exc))
        raise GeolocError(
            f"the database refitted on more photos could not take the place of {where} "
            f"({exc.strerror or exc}: is it a mount point?); {where} is unchanged, the new one is kept in "
            f"{display_path(swap.building(database.path))}; move it into place yourself, or index "
            "into a --db inside a folder") from None
    finally:
        if lock is not None:
            lock.release()
    if stayed:
        message(f"{count(len(stayed), 'file')} of yours could not go back into {where}, where the same name is now "
                f"taken (e.g. {display_path(stayed[0])}): kept in {display_path(swap.retired(database.path))}")
    fresh = set(to_index) - {p for p, _ in new.error_files}
    with Database.open(database.path) as rebuilt:
        photos = fitted_on(rebuilt)
    outcome.swapped = True
    outcome.indexed, outcome.unchanged, outcome.removed = len(fresh), new.total - len(fresh), due.dropped
    outcome.total, outcome.located, outcome.unlocated = new.total, new.located, new.unlocated
    outcome.vocabulary_photos = photos
    outcome.report = RefitReport(before=due.before, after=photos or due.after, reason=due.reason,
                                 reextracted=new.indexed)
    return outcome
