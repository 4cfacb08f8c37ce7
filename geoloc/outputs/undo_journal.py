"""The undo record of ``--write-exif``: one JSON-lines journal per run, written ahead.

Each photo's line is on disk (fsynced) *before* the rename that changes the photo, with the
photo's content hash before and after and the GPS tags it had. So after a crash, even a
``kill -9``, the journal says everything that may have happened: a photo whose hash is the
"after" one was changed, one whose hash is still the "before" one was not, and the temporary
file of the photo in flight is named (in a ``temp`` line written before the file is made) so
that the next run removes it. ``geoloc undo-exif`` reads the same lines to put photos back.

Journals live in ``$GEOLOC_HOME/undo/``; they are small (a few hundred bytes a photo) and are
kept until the user deletes them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from geoloc import __version__
from geoloc.errors import GeolocError
from geoloc.files import display_path, fsync_dir, path_bytes
from geoloc.paths import geoloc_home

KIND = "geoloc-exif-journal"
#: 2: a run that finishes ends its journal with an ``end`` line, so that one killed on the way is
#: told from one that wrote what it meant to (version 1 journals are taken as finished).
VERSION = 2
SUFFIX = ".jsonl"
#: The fields that hold paths. A name that is not UTF-8 (POSIX names are bytes) is written as
#: JSON's escape of Python's surrogate escape, which gives the exact bytes back to Python, and
#: again as hex in ``<field>_bytes`` for any other reader; that one wins when both are there.
PATH_FIELDS = ("photo", "temp")
_SURROGATE = re.compile("[\ud800-\udfff]")


def undo_dir() -> Path:
    return geoloc_home() / "undo"


@dataclass
class Entry:
    """One photo written by a run, as its journal line says."""

    photo: Path
    before: str  # sha256 of the photo before the write
    after: str  # sha256 of the file that replaced it
    gps_before: dict[str, str]
    backend: str
    estimate: dict = field(default_factory=dict)
    restored: str | None = None  # sha256 after an undo replaced it, when one did
    #: The GPS put back is an estimate of an earlier geoloc run (this run rewrote it).
    before_by_geoloc: bool = False


@dataclass
class JournalInfo:
    """What a journal holds, for ``undo-exif --list`` and for choosing the run to undo."""

    path: Path
    created: str
    backend: str
    entries: list[Entry]
    temps: list[Path]
    undone: bool
    damaged_lines: int = 0
    #: Photos the undo had to leave as they were (edited or gone since): the run is closed all the
    #: same, so that the next ``undo-exif`` goes on with the run before it.
    left_alone: int = 0
    #: The run stopped on the way (killed, Ctrl-C): its re-run finishes its work, and undoing the
    #: re-run puts back what this run changed too.
    interrupted: bool = False

    @property
    def name(self) -> str:
        return self.path.stem


class Journal:
    """An open journal of one ``--write-exif`` run (or of an undo, appended to the run's own)."""

    def __init__(self, path: Path, fh):
        self.path = path
        self._fh = fh

    @classmethod
    def create(cls, backend: str, backend_version: str) -> "Journal":
        folder = undo_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            now = datetime.now(timezone.utc)
            stamp = now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond:06d}Z"  # sorts by time
            path = folder / f"exif-{stamp}-{os.getpid()}{SUFFIX}"
            fh = open(path, "x", encoding="utf-8")
            _lock(fh)
        except OSError as exc:
            raise GeolocError(f"cannot write the undo journal in {display_path(folder)}: "
                              f"{exc.strerror or exc}; no photo was changed") from None
        journal = cls(path, fh)
        journal.append({"journal": KIND, "version": VERSION, "created": _now(), "geoloc": __version__,
                        "backend": backend, "backend_version": backend_version})
        fsync_dir(folder)
        return journal

    @classmethod
    def reopen(cls, path: Path) -> "Journal":
        try:
            fh = open(path, "a", encoding="utf-8")
        except OSError as exc:
            raise GeolocError(f"cannot append to the undo journal {display_path(path)}: "
                              f"{exc.strerror or exc}; no photo was changed") from None
        if not _lock(fh):
            fh.close()
            raise GeolocError(f"{display_path(path)} is in use by another geoloc process (writing or "
                              "undoing); run again when it has finished")
        try:
            return cls(path, fh)
        except OSError as exc:
            raise GeolocError(f"cannot append to the undo journal {display_path(path)}: "
                              f"{exc.strerror or exc}; no photo was changed") from None

    def append(self, record: dict) -> None:
        """One line, on disk before this returns: the photo is changed only after."""
        record = dict(record)
        for key in PATH_FIELDS:
            if isinstance(record.get(key), str) and (raw := path_bytes(record[key])) is not None:
                record[f"{key}_bytes"] = raw
        line = json.dumps(record, ensure_ascii=False, sort_keys=True)
        # A surrogate cannot be written as UTF-8: as JSON's \udcXX escape it stays one ASCII word.
        line = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", line)
        self._fh.write(line + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_journal(path: Path) -> JournalInfo:
    """A journal's entries; a line cut short by a crash (the last one) is counted, not fatal."""
    header: dict = {}
    entries: dict[str, Entry] = {}
    order: list[str] = []
    temps: list[Path] = []
    undone = False
    ended = False
    left_alone = 0
    damaged = 0
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise GeolocError(f"cannot read the undo journal {display_path(path)}: {exc.strerror or exc}") from None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            damaged += 1
            continue
        if not isinstance(record, dict):
            damaged += 1
            continue
        _exact_paths(record)
        op = record.get("op")
        if record.get("journal") == KIND:
            header = record
        elif op == "temp":
            if not isinstance(record.get("temp"), str):
                damaged += 1
                continue
            temps.append(Path(record["temp"]))
        elif op == "write":
            key = record.get("photo")
            if not all(isinstance(record.get(k), str) for k in ("photo", "before", "after")):
                damaged += 1  # a line edited by hand, or from another tool: never acted on
                continue
            if key not in entries:
                order.append(key)
            entries[key] = Entry(Path(key), record["before"], record["after"], dict(record.get("gps_before") or {}),
                                 record.get("backend", ""), dict(record.get("estimate") or {}),
                                 before_by_geoloc=bool(record.get("before_by_geoloc")))
        elif op == "after" and record.get("photo") in entries and isinstance(record.get("after"), str):
            entries[record["photo"]].after = record["after"]  # a later run's undo handed it back
        elif op == "undo" and record.get("photo") in entries:
            entries[record["photo"]].restored = record.get("restored")
        elif op == "undone":
            undone = True
            left_alone = int(record.get("left_alone") or 0)
        elif op == "end":
            ended = True
    if not header:
        raise GeolocError(f"{display_path(path)} is not a geoloc undo journal")
    version = header.get("version")
    interrupted = isinstance(version, int) and version >= 2 and not ended
    return JournalInfo(path, header.get("created", ""), header.get("backend", ""),
                       [entries[k] for k in order], temps, undone, damaged, left_alone, interrupted)


def _exact_paths(record: dict) -> None:
    """Each path field as the exact name its ``_bytes`` twin gives, where there is one (journals
    written before the twin existed have none, and are read as they are)."""
    for key in PATH_FIELDS:
        raw = record.get(f"{key}_bytes")
        if isinstance(raw, str):
            try:
                record[key] = os.fsdecode(bytes.fromhex(raw))
            except ValueError:
                pass


def journals() -> list[Path]:
    """Every journal, oldest first (their names sort by time)."""
    folder = undo_dir()
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f"exif-*{SUFFIX}") if p.is_file())


def remove_stale_temps() -> list[Path]:
    """Temporary files a killed run left beside photos, named by the journals: removed.

    Only files with geoloc's temporary-name mark are touched; a temp that already became the
    photo (renamed) no longer exists under its temporary name.
    """
    from geoloc.photos.gpswrite import is_temp_name

    removed = []
    for path in journals():
        if _in_use(path):  # a run writing or undoing right now: its temporary file is live
            continue
        try:
            info = read_journal(path)
        except GeolocError:
            continue
        for temp in info.temps:
            if is_temp_name(temp) and temp.is_file():
                try:
                    temp.unlink()
                    removed.append(temp)
                except OSError:
                    pass
    return removed


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _lock(fh) -> bool:
    """Mark a journal as in use by this run (an advisory lock, dropped when the file is closed
    or the process dies): another run then neither appends to it nor takes its temporary files
    for a killed run's leftovers. True where locking is unavailable (Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return True
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def _in_use(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            import fcntl

            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False
    except (OSError, ImportError):
        return False
