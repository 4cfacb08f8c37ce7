"""Estimates written into the photos themselves (``locate --write-exif``), and taken out again.

The rules a photographer can rely on: only estimates of at least ``min_confidence`` (high by
default) are written; only into photos without a position of their own (``overwrite`` to
replace one), or whose GPS geoloc itself wrote before; never into RAW files; each photo
through :func:`geoloc.photos.gpswrite.write_to_temp` (read back, pixels compared) and one
rename; every change in the run's undo journal (:mod:`geoloc.outputs.undo_journal`) before it happens,
so :func:`undo_run` can put the GPS tags back as they were.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from geoloc.errors import GeolocError
from geoloc.outputs.gate import confidence_gate
from geoloc.outputs.export import PHOTO_GONE
from geoloc.files import display_path, fsync_dir, sha256_file
from geoloc.photos.gpswrite import Backend, GpsFix, WriteError, find_backend, temp_path, unwritable_reason, write_to_temp
from geoloc.photos.meta import read_gps_block
from geoloc.photos.tags import written_by_geoloc
from geoloc.outputs.undo_journal import Journal, JournalInfo, journals, read_journal, remove_stale_temps


@dataclass
class WriteOptions:
    min_confidence: str = "high"
    #: Replace GPS the photo already has (its camera's, a sidecar's), with an undo record.
    overwrite: bool = False
    #: "exiftool" or "pyexiv2"; None: exiftool when installed, else pyexiv2.
    backend: str | None = None


@dataclass
class WriteReport:
    written: list[Path] = field(default_factory=list)
    below: list[Path] = field(default_factory=list)  # estimates under min_confidence
    own_position: list[Path] = field(default_factory=list)  # photos with a position of their own
    unwritable: list[tuple[Path, str]] = field(default_factory=list)  # format: use a sidecar
    failed: list[tuple[Path, str]] = field(default_factory=list)  # left unchanged, and why
    journal: Path | None = None
    backend: str = ""


def write_estimates(results: Iterable, options: WriteOptions | None = None,
                    on_progress: Callable[[int], None] | None = None) -> WriteReport:
    """Write each located result's estimate into its photo, by the rules above."""
    opts = options or WriteOptions()
    advance = on_progress or (lambda n: None)
    backend = find_backend(opts.backend)
    report = WriteReport(backend=f"{backend.name} {backend.version}")
    remove_stale_temps()
    journal: Journal | None = None
    done: set[str] = set()
    results = list(results)
    below = {id(r) for r in confidence_gate(results, opts.min_confidence)[1]}
    try:
        for r in results:
            if r.estimate is None:
                continue
            photo = Path(os.path.realpath(r.query))
            if os.fspath(photo) in done:  # the same photo named twice
                advance(1)
                continue
            done.add(os.fspath(photo))
            if id(r) in below:
                report.below.append(Path(r.query))
            elif (why := _refusal(photo, r, backend, opts)) is not None:
                kind, reason = why
                if kind == "own":
                    report.own_position.append(Path(r.query))
                elif kind == "format":
                    report.unwritable.append((Path(r.query), reason))
                else:
                    report.failed.append((Path(r.query), reason))
            else:
                if journal is None:
                    journal = Journal.create(backend.name, backend.version)
                    report.journal = journal.path
                try:
                    _write_one(photo, r, backend, journal)
                    report.written.append(Path(r.query))
                except (WriteError, OSError) as exc:
                    report.failed.append((Path(r.query), _reason(exc)))
            advance(1)
        if journal is not None:
            journal.append({"op": "end"})  # finished: not a killed run that a re-run takes over
    finally:
        if journal is not None:
            journal.close()
        backend.close()
    return report


def _refusal(photo: Path, result, backend: Backend, opts: WriteOptions) -> tuple[str, str] | None:
    """Why this photo is not written: ("own" | "format" | "error", reason), or None to write."""
    from geoloc.photos import read_meta
    from geoloc.errors import PhotoError

    try:
        st = os.stat(photo)
    except FileNotFoundError:  # located from its stored descriptor (--unlocated), moved since
        return "error", PHOTO_GONE
    except OSError as exc:
        return "error", f"cannot read: {exc.strerror or exc}"
    reason = unwritable_reason(photo, backend)
    if reason is not None:
        return "format", reason
    if not opts.overwrite:
        if result.query_gps is not None:
            return "own", "it has a position of its own"
        try:
            meta = read_meta(photo, sidecars=False)
        except PhotoError as exc:
            return "error", exc.reason
        if meta.exif_gps == "other":
            return "own", f"its EXIF holds GPS coordinates geoloc did not write ({meta.no_position_reason})"
    # The rename would replace it all the same: respect the mode. Its owner's write bit counts
    # too, so that root (a container's usual user, whom os.access lets write anything) does not
    # overwrite a photo someone made read-only on purpose.
    if not st.st_mode & stat.S_IWUSR or not os.access(photo, os.W_OK):
        if _on_read_only_file_system(photo):
            return "error", ("it is on a read-only file system (a card, a disc, a read-only mount), which "
                             "no chmod can change; copy the photos to a writable disk, or use --csv or --gpx")
        return "error", "the photo is read-only; make it writable to let geoloc write its GPS"
    return None


def _on_read_only_file_system(photo: Path) -> bool:
    try:
        return bool(os.statvfs(photo).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows): the mode's advice stands
        return False


def _write_one(photo: Path, result, backend: Backend, journal: Journal) -> None:
    e = result.estimate
    fix = GpsFix(float(e.lat), float(e.lon), float(e.radius_m))
    before = sha256_file(photo)
    gps_before = backend.gps_tags(photo)
    by_geoloc = _holds_estimate(photo)  # an earlier run's estimate, rewritten by this one

    def write(temp: Path) -> dict:
        write_to_temp(photo, temp, backend, fix)
        if sha256_file(photo) != before:
            raise WriteError("the photo changed while geoloc was writing; it is left as it is now")
        return {
            "op": "write", "photo": os.fspath(photo), "before": before, "after": sha256_file(temp),
            "gps_before": gps_before, "before_by_geoloc": by_geoloc, "backend": backend.name,
            "estimate": {"lat": round(fix.lat, 7), "lon": round(fix.lon, 7), "radius_m": round(fix.radius_m, 1),
                         "confidence": e.confidence},
        }

    _replace(photo, journal, write)


def _replace(photo: Path, journal: Journal, write: Callable[[Path], dict]) -> dict:
    """The one way a photo is changed, by a write or an undo: the temporary file's name in the
    journal first (a killed run's leftover is then found), ``write(temp)`` fills and proves it
    and returns the journal line that says what it is, that line goes to disk, then one rename.
    Returns that line."""
    temp = temp_path(photo)
    journal.append({"op": "temp", "photo": os.fspath(photo), "temp": os.fspath(temp)})
    try:
        record = write(temp)
        journal.append(record)
        os.replace(temp, photo)
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(photo.parent)
    return record


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        where = f" {display_path(exc.filename)}" if getattr(exc, "filename", None) else ""
        return f"cannot write{where}: {exc.strerror or exc}; left unchanged"
    return str(exc)


# --------------------------------------------------------------------------------------------
# Undo
# --------------------------------------------------------------------------------------------


@dataclass
class UndoReport:
    journal: Path
    restored: list[Path] = field(default_factory=list)
    already: list[Path] = field(default_factory=list)  # undone before, or never changed
    changed: list[Path] = field(default_factory=list)  # edited since geoloc wrote it: left alone
    missing: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.changed or self.missing or self.failed)

    @property
    def left_alone(self) -> int:
        """Photos that will not come back as geoloc wrote them (edited or gone since)."""
        return len(self.changed) + len(self.missing)

    @property
    def closed(self) -> bool:
        """Nothing is left worth retrying: the run counts as undone, the next undo goes on."""
        return not self.failed


def latest_journal() -> Path:
    """The newest journal not yet undone in full (what ``geoloc undo-exif`` undoes by default)."""
    for path in reversed(journals()):
        try:
            info = read_journal(path)
        except GeolocError:
            continue
        if not info.undone and info.entries:
            return path
    raise GeolocError("nothing to undo: no `geoloc locate --write-exif` run wrote into a photo "
                      "(or every run is undone already)")


def undo_run(path: Path | None = None, on_progress: Callable[[int], None] | None = None) -> UndoReport:
    """Put the GPS tags of every photo a run wrote back as they were, newest write first.

    A photo is touched only while its content is exactly what geoloc wrote: one edited since
    (by a photo manager, say) is left alone and reported. Safe to run again after a crash.
    """
    advance = on_progress or (lambda n: None)
    path = path or latest_journal()
    info = read_journal(path)
    report = UndoReport(path)
    remove_stale_temps()
    repeated = {e.photo: _repeated_write(e, path) for e in info.entries if e.before == e.after}
    backend = _undo_backend(info, [w for _, w in filter(None, repeated.values())])
    earlier_runs: set[Path] = set()
    with Journal.reopen(path) as journal, contextlib.closing(backend):
        for entry in reversed(info.entries):
            photo = entry.photo
            try:
                current = sha256_file(photo)
            except FileNotFoundError:
                report.missing.append(photo)
                advance(1)
                continue
            except OSError as exc:
                report.failed.append((photo, _reason(exc)))
                advance(1)
                continue
            earlier = repeated.get(photo)
            if earlier is not None and current == entry.after:
                # This run wrote what an earlier run had written (a re-run after a kill): the
                # GPS to put back is the one from before that run.
                run, entry = earlier
                try:
                    _restore_one(photo, entry, backend, journal, undone=run)
                    report.restored.append(photo)
                    earlier_runs.add(run)
                except (WriteError, OSError) as exc:
                    report.failed.append((photo, _reason(exc)))
            elif current in (entry.restored, entry.before):
                report.already.append(photo)
            elif current != entry.after:
                report.changed.append(photo)
            else:
                try:
                    _restore_one(photo, entry, backend, journal)
                    report.restored.append(photo)
                except (WriteError, OSError) as exc:
                    report.failed.append((photo, _reason(exc)))
            advance(1)
        # Edited or gone photos will not come back as geoloc wrote them: once nothing else is
        # left to retry, the run is closed and the next undo goes on with the run before it.
        if report.closed:
            journal.append({"op": "undone", **({"left_alone": report.left_alone} if report.left_alone else {})})
    for run in sorted(earlier_runs):
        _close_if_undone(run)
    return report


def _repeated_write(entry, journal: Path) -> tuple[Path, object] | None:
    """For a write that changed nothing because the photo already held this very estimate from
    a run that was killed (this run is its re-run, finishing the job): that run's record of the
    photo, which knows the GPS from before. A finished run's estimate is its own to undo, run by
    run; runs between that only repeated the write themselves are looked past."""
    for path in reversed(journals()):
        if path >= journal:  # names sort by time: only runs before this one
            continue
        try:
            info = read_journal(path)
        except GeolocError:
            continue
        mine = next((e for e in info.entries if e.photo == entry.photo and e.before != e.after), None)
        if mine is None:
            continue
        if info.interrupted and mine.after == entry.after and mine.restored is None:
            return path, mine
        return None
    return None


def _close_if_undone(path: Path) -> None:
    """An earlier run whose every photo was put back through a re-run's undo is undone too,
    so that the next ``undo-exif`` does not stop at it for nothing."""
    try:
        info = read_journal(path)
        if not info.undone and all(e.restored is not None for e in info.entries):
            with Journal.reopen(path) as journal:
                journal.append({"op": "undone"})
    except GeolocError:
        pass  # in use, or unreadable: the next undo of it finds its photos already put back


def _undo_backend(info: JournalInfo, more: list | None = None) -> Backend:
    """The backend that read the old tags must write them back (the tag names are its own);
    photos that had no GPS can be cleared by either."""
    if any(e.gps_before for e in [*info.entries, *(more or [])]):
        try:
            return find_backend(info.backend)
        except GeolocError as exc:
            raise GeolocError(f"{display_path(info.path)} was written with {info.backend}, which is needed "
                              f"to put back the photos' earlier GPS: {exc}") from None
    return find_backend()


def _restore_one(photo: Path, entry, backend: Backend, journal: Journal, undone: Path | None = None) -> None:
    """``undone``: the earlier run whose ``entry`` this is, when a re-run's undo puts it back;
    its journal is told too, so that undoing it later finds the photo already put back."""
    if entry.gps_before and entry.backend and entry.backend != backend.name:
        raise WriteError(f"its earlier GPS was read by {entry.backend}, which must put it back; "
                         f"run with GEOLOC_EXIF_WRITER={entry.backend}")

    def restore(temp: Path) -> dict:
        write_to_temp(photo, temp, backend, None, restore=entry.gps_before,
                      restores_estimate=entry.before_by_geoloc)
        return {"op": "undo", "photo": os.fspath(photo), "restored": sha256_file(temp)}

    record = _replace(photo, journal, restore)
    if undone is not None:
        with contextlib.suppress(GeolocError):  # in use: its undo finds the photo put back all the same
            with Journal.reopen(undone) as earlier:
                earlier.append(record)
    if entry.before_by_geoloc:
        _hand_back(photo, entry.before, record["restored"], undone or journal.path)


def _holds_estimate(photo: Path) -> bool:
    try:
        return written_by_geoloc(read_gps_block(photo))
    except Exception:  # unreadable GPS is no estimate of ours; the write itself will say more
        return False


def _hand_back(photo: Path, before: str, now: str, undone: Path) -> None:
    """The undo put back an earlier run's estimate, in a file whose bytes are not that run's
    own: tell that run's journal the photo is again as it left it, so that undoing it in turn
    puts back the GPS from before either run (rather than calling the photo edited since)."""
    for path in reversed(journals()):
        if path == undone:
            continue
        try:
            info = read_journal(path)
        except GeolocError:
            continue
        mine = next((e for e in info.entries if e.photo == photo and e.after == before), None)
        if mine is None:
            continue
        try:
            with Journal.reopen(path) as earlier:
                earlier.append({"op": "after", "photo": os.fspath(photo), "after": now})
        except GeolocError:
            pass  # that run's undo will then report the photo as changed, and leave it
        return
