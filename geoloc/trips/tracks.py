"""GPS tracks: where the user was, and when, from the files their devices and Google kept.

``read_track(path)`` reads one file, whatever its suffix says: the format is told by its first
bytes (GPX, KML, KMZ, Google Takeout JSON; :mod:`geoloc.trips.gpx`, :mod:`.kml`,
:mod:`.takeout`). ``read_tracks(paths)`` reads several and merges them. Every file is streamed
(XML through defusedxml, JSON one array element at a time), so memory grows with the number of
fixes kept (32 bytes each), not with the file.

A :class:`Track` is clean: times strictly increasing, positions valid, no time in the future.
What cleaning drops is said in one ``warn`` line per kind, with the count; what cannot make a
track at all (no time stamps, not a track, malformed, an entity attack) is a :class:`TrackError`
naming the file and the reason. Segments are the reader's: consecutive fixes with the same
number may be interpolated between, never across segments (a GPX ``trkseg``, a ``gx:Track``, a
Timeline path); a fix alone in its segment is a fix, not a line.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoloc.errors import GeolocError
from geoloc.files import display_path
from geoloc.trips._common import BadTrack, Points

Warn = Callable[[str], None]

#: Fixes later than now plus this are dropped: a clock set wrong, not a trip yet to come.
FUTURE_SLACK_S = 86_400.0


class TrackError(GeolocError):
    """A track file that cannot be used: one line naming the file and the reason."""


@dataclass(frozen=True, eq=False)
class Track:
    """Time-stamped fixes, sorted by time. The arrays are read-only and of equal length.

    ``t``: float64 UTC seconds since the Unix epoch, strictly increasing; ``lat``/``lon``:
    float64 degrees; ``segment``: int32, interpolate only between consecutive fixes with the
    same number; ``accuracy_m``: float32 metres, NaN where unknown; ``sources``: the files read.
    """

    sources: tuple[Path, ...]
    t: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    segment: np.ndarray
    accuracy_m: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.t)
        for name, dtype in (("t", np.float64), ("lat", np.float64), ("lon", np.float64),
                            ("segment", np.int32), ("accuracy_m", np.float32)):
            array = np.asarray(getattr(self, name), dtype=dtype)
            if array.shape != (n,):
                raise ValueError(f"Track.{name} has shape {array.shape}, expected ({n},)")
            array.flags.writeable = False
            object.__setattr__(self, name, array)
        object.__setattr__(self, "sources", tuple(Path(p) for p in self.sources))

    def __len__(self) -> int:
        return len(self.t)

    def __repr__(self) -> str:
        span = ""
        if len(self):
            first, last = (time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(x)) for x in (self.t[0], self.t[-1]))
            span = f", {first} → {last}"
        return (f"Track({len(self)} fixes in {len(np.unique(self.segment))} segments{span}, "
                f"from {', '.join(map(str, self.sources)) or 'nothing'})")


def _empty() -> Track:
    return Track((), np.empty(0), np.empty(0), np.empty(0), np.empty(0, np.int32), np.empty(0, np.float32))


#: A track with no fixes (what ``merge([])`` and ``read_tracks([])`` give).
EMPTY: Track = _empty()


def read_track(path: Path, *, warn: Warn | None = None) -> Track:
    """The clean track in one file (GPX, KML, KMZ or Takeout JSON, told by content)."""
    path = Path(path)
    where = display_path(path)
    say = _warner(warn, where)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block, a device never end
            raise TrackError(f"{where}: is a folder, not a track file" if path.is_dir()
                             else f"{where}: is not a regular file (a FIFO, a device or a socket)")
        with open(path, "rb") as stream:
            kind = _sniff(stream.read(_HEAD), path)
            stream.seek(0)
            points = _read(kind, stream)
    except BadTrack as exc:
        raise TrackError(f"{where}: {exc}") from None
    except IsADirectoryError:
        raise TrackError(f"{where}: is a folder, not a track file") from None
    except FileNotFoundError:
        raise TrackError(f"{where}: no such file") from None
    except MemoryError:
        raise TrackError(f"{where}: too large to read into memory") from None
    except OSError as exc:
        raise TrackError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    for note in points.notes:
        say(note)
    return _clean(points, (path,), where, say, kind)


def read_tracks(paths: Sequence[Path], *, warn: Warn | None = None) -> Track:
    """The tracks in ``paths`` merged into one; a file that cannot be read raises TrackError."""
    tracks = [read_track(p, warn=warn) for p in paths]
    return merge(tracks, warn=warn)


def merge(tracks: Sequence[Track], *, warn: Warn | None = None) -> Track:
    """One track from several: sorted by time, segments kept apart (renumbered to stay unique).

    Where two tracks have a fix at the same time, the one given first is kept (``warn`` says how
    many of those were elsewhere).
    """
    sources = tuple(dict.fromkeys(p for tr in tracks for p in tr.sources))
    tracks = [tr for tr in tracks if len(tr)]
    if not tracks:
        return Track(sources, *_fields(EMPTY)) if sources else EMPTY
    if len(tracks) == 1:
        return tracks[0] if tracks[0].sources == sources else Track(sources, *_fields(tracks[0]))
    offsets = np.cumsum([0] + [int(tr.segment.max()) + 1 for tr in tracks[:-1]])
    cols = [np.concatenate([tr.t for tr in tracks]),
            np.concatenate([tr.lat for tr in tracks]),
            np.concatenate([tr.lon for tr in tracks]),
            np.concatenate([tr.segment.astype(np.int64) + off for tr, off in zip(tracks, offsets)]),
            np.concatenate([tr.accuracy_m for tr in tracks])]
    elsewhere = _sort_unique(cols)
    if elsewhere and warn is not None:
        warn(f"{elsewhere} fixes of different files at the same time but elsewhere: kept the file given first")
    return Track(sources, *cols)


def _fields(track: Track) -> tuple[np.ndarray, ...]:
    return track.t, track.lat, track.lon, track.segment, track.accuracy_m


# --- telling the format ------------------------------------------------------------------------

#: Bytes looked at to tell the format: enough for an XML prolog with a long licence comment.
_HEAD = 64 << 10

_NOT_TRACKS = (
    (b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image (or a RAW photo)"), (b"MM\x00*", "a TIFF image (or a RAW photo)"),
    (b"%PDF", "a PDF document"), (b"RIFF", "a RIFF file (WebP, WAV or AVI)"), (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf", "a 7-Zip archive"), (b"Rar!", "a RAR archive"), (b"SQLite format 3", "an SQLite database"),
)


def _sniff(head: bytes, path: Path) -> str:
    """``"gpx"``, ``"kml"``, ``"kmz"`` or ``"takeout"`` from a file's first bytes, or BadTrack."""
    if not head:
        raise BadTrack("is empty")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "kmz"
    for magic, what in _NOT_TRACKS:
        if head.startswith(magic):
            raise BadTrack(f"is {what}, not a track (GPX, KML, KMZ or Google Takeout JSON)")
    if head[4:8] == b"ftyp":
        raise BadTrack("is a HEIC/MP4/MOV file, not a track (GPX, KML, KMZ or Google Takeout JSON)")
    text = _decode_head(head).lstrip()
    if text.startswith("<"):
        root = _xml_root(text)
        if root in ("gpx", "kml"):
            return root
        if "<!DOCTYPE" in text or "<!ENTITY" in text:
            raise BadTrack("declares a DTD or entities: refused, no track needs one and it is the "
                           "shape of an entity-expansion attack")
        named = f"its root element is <{root}>" if root else f"no root element in its first {_HEAD >> 10} KB"
        raise BadTrack(f"is XML but neither GPX nor KML ({named})")
    if text[:1] in ("{", "["):
        return "takeout"
    suffix = path.suffix.lower()
    hint = f" despite its {suffix} suffix" if suffix in (".gpx", ".kml", ".kmz", ".json") else ""
    raise BadTrack(f"is not a GPX, KML, KMZ or Google Takeout JSON file{hint}")


def _decode_head(head: bytes) -> str:
    for bom, codec in ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")):
        if head.startswith(bom):
            return head[len(bom):].decode(codec, errors="ignore")
    return head.decode("utf-8", errors="ignore")


def _xml_root(text: str) -> str | None:
    """The local name of the first element, skipping the prolog, comments and a DOCTYPE's name."""
    pos = 0
    while True:
        pos = text.find("<", pos)
        if pos < 0 or pos + 1 >= len(text):
            return None
        nxt = text[pos + 1]
        if nxt in "?!":
            if text.startswith("<!--", pos):
                end = text.find("-->", pos) + 3
            elif text.startswith("<!DOCTYPE", pos) and "[" in text[pos:text.find(">", pos) + 1]:
                end = text.find("]>", pos) + 2  # past the internal subset: the parser refuses it
            else:
                end = text.find(">", pos) + 1
            if end <= 2:
                return None
            pos = end
            continue
        name = text[pos + 1:].split(None, 1)[0].split(">", 1)[0].split("/", 1)[0]
        return name.rpartition(":")[2] or None


def _read(kind: str, stream) -> Points:
    if kind == "gpx":
        from geoloc.trips.gpx import read_gpx

        return read_gpx(stream)
    if kind == "kml":
        from geoloc.trips.kml import read_kml

        return read_kml(stream)
    if kind == "kmz":
        from geoloc.trips.kml import read_kmz

        return read_kmz(stream)
    from geoloc.trips.takeout import read_takeout

    return read_takeout(stream)


# --- cleaning ------------------------------------------------------------------------------------


def _warner(warn: Warn | None, where: str) -> Warn:
    if warn is None:
        from geoloc import console

        warn = console.warn
    return lambda message: warn(f"{where}: {message}")


def _clean(points: Points, sources: tuple[Path, ...], where: str, say: Warn, kind: str) -> Track:
    """Drop what cannot be a fix (saying so, with counts), sort, and keep each time once."""
    n = len(points)
    if n == 0:
        what = "location records" if kind == "takeout" else "track points, route points or waypoints"
        raise TrackError(f"{where}: holds no {what}")
    t = np.frombuffer(points.t, dtype=np.float64)
    timed = ~np.isnan(t)
    if not timed.any():
        raise TrackError(f"{where}: has no time stamps: a track without times cannot place photos by time")
    lat = np.frombuffer(points.lat, dtype=np.float64)
    lon = np.frombuffer(points.lon, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        valid = (np.abs(lat) <= 90.0) & (np.abs(lon) <= 180.0) & ~((lat == 0.0) & (lon == 0.0))
        future = t > time.time() + FUTURE_SLACK_S
    if points.untimed:
        say(f"{points.untimed} fixes without a time stamp dropped")
    if points.bad_times:
        say(f"{points.bad_times} fixes with an unreadable time dropped (e.g. {points.bad_time_example!r})")
    if points.zoneless:
        say(f"{points.zoneless} times without a time zone read as UTC")
    bad_pos = int(np.count_nonzero(timed & ~valid))
    if bad_pos:
        say(f"{bad_pos} fixes with an invalid position dropped (latitude beyond ±90°, longitude beyond "
            "±180°, missing, or 0°, 0°)")
    n_future = int(np.count_nonzero(timed & valid & future))
    if n_future:
        say(f"{n_future} fixes dated in the future (after tomorrow) dropped: a clock set wrong")
    keep = timed & valid & ~future
    del t, lat, lon, timed, valid, future
    if not keep.any():
        raise TrackError(f"{where}: has no usable fixes (all {n} dropped, see the warnings above)")
    everything = bool(keep.all())
    cols = []
    for name, dtype in (("t", np.float64), ("lat", np.float64), ("lon", np.float64),
                        ("seg", np.int32), ("accuracy", np.float32)):
        view = np.frombuffer(getattr(points, name), dtype=dtype)
        cols.append(view if everything else view[keep])  # a view keeps the array's buffer alive
        setattr(points, name, None)  # one column at a time: the copy is all that is left of it
        del view
    del keep
    late = _out_of_order(cols[0], cols[3])
    elsewhere = _sort_unique(cols)
    if late:
        say(f"{late} fixes out of time order: sorted")
    if elsewhere:
        say(f"{elsewhere} fixes at the same time as an earlier one but elsewhere: kept the earlier one")
    return Track(sources, *cols)


def _out_of_order(t: np.ndarray, seg: np.ndarray) -> int:
    """How many fixes, in file order, come after a later fix of their own segment.

    Segments are counted apart: a Timeline file lists a journey's path after its activity and
    raw signals after both, overlapping in time by design; that is not disorder.
    """
    back = np.flatnonzero((t[1:] < t[:-1]) & (seg[1:] == seg[:-1]))
    late = 0
    for number in np.unique(seg[back + 1]) if len(back) else ():
        times = t[seg == number]
        late += int(np.count_nonzero(times < np.maximum.accumulate(times)))
    return late


def _sort_unique(cols: list[np.ndarray]) -> int:
    """Sort the columns ``[t, lat, lon, segment, accuracy]`` by time (stable), in place, and keep
    the first fix of each time; one column is copied at a time, to bound memory.

    Returns the number of dropped fixes that had the same time as the kept one but another
    position.
    """
    t = cols[0]
    if np.any(t[1:] < t[:-1]):
        order = np.argsort(t, kind="stable")
        del t
        for i in range(len(cols)):
            cols[i] = cols[i][order]
        del order
        t = cols[0]
    same = np.empty(len(t), dtype=bool)
    same[:1] = False
    np.equal(t[1:], t[:-1], out=same[1:])
    del t
    elsewhere = 0
    if same.any():
        lat, lon = cols[1], cols[2]
        first = np.maximum.accumulate(np.where(same, 0, np.arange(len(same))))
        elsewhere = int(np.count_nonzero(same & ((lat != lat[first]) | (lon != lon[first]))))
        del lat, lon, first
        np.logical_not(same, out=same)
        for i in range(len(cols)):
            cols[i] = cols[i][same]
    return elsewhere
