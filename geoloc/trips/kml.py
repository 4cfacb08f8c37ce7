"""KML and KMZ: Google Earth's tracks, and time-stamped placemarks.

- ``gx:Track`` (what Google Earth, My Tracks and many loggers write): ``<when>`` times paired in
  order with ``<gx:coord>`` "lon lat [alt]"; each ``gx:Track`` is a segment, also inside a
  ``gx:MultiTrack``.
- A ``Placemark`` with a ``LineString`` and a ``TimeSpan`` (``begin``/``end``), as Google's
  old location-history KML writes a journey: the line's points are spread over the span in
  proportion to the distance along the line. A ``LineString`` with a single ``TimeStamp`` has no
  time for its points: they are dropped, counted.
- A ``Placemark`` with a ``Point``: a single fix at its ``TimeStamp``; with a ``TimeSpan``, a fix
  at the place at ``begin`` and at ``end`` (a stay), one segment.

A KMZ is a zip holding ``doc.kml`` (read alone when present, as Google Earth does) or other
``.kml`` files (all read, in the archive's order). Members are streamed out of the zip.
"""

from __future__ import annotations

import math
import re
import zipfile
from array import array
from typing import BinaryIO

import numpy as np

from geoloc.trips._common import NAN, BadTrack, LocalNames, Points, number, parse_xml

_COMMA = re.compile(r"\s*,\s*")
#: The longest text of one element kept (a LineString's coordinates): 16 M characters, about 600 000 points.
MAX_TEXT = 16 << 20


def read_kml(stream: BinaryIO, points: Points | None = None) -> Points:
    """Every fix of a KML document, in file order (times NaN where missing)."""
    target = _Kml(points if points is not None else Points())
    parse_xml(stream, target)
    if not target.root_seen:
        raise BadTrack("is XML but not KML (its root element is not <kml>)")
    return target.points


def read_kmz(stream: BinaryIO) -> Points:
    """The fixes of ``doc.kml`` in a KMZ, else of every ``.kml`` it holds."""
    try:
        archive = zipfile.ZipFile(stream)
        names = [i.filename for i in archive.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise BadTrack(f"is a damaged zip archive ({exc})") from None
    kmls = [n for n in names if n.lower().endswith(".kml")]
    docs = [n for n in kmls if n.lower().rpartition("/")[2] == "doc.kml"]
    chosen = docs[:1] or kmls
    if not chosen:
        listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise BadTrack(f"is a zip archive without a .kml inside, not a KMZ (it holds: {listed or 'nothing'})")
    points = Points()
    for name in chosen:
        try:
            with archive.open(name) as member:
                read_kml(member, points)
        except BadTrack as exc:
            raise BadTrack(f"{name} inside {exc}") from None
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
            raise BadTrack(f"cannot read {name} inside the KMZ ({exc})") from None
    return points


class _Kml:
    """Parser callbacks: a stack of element names, one Placemark's times and shapes at a time."""

    def __init__(self, points: Points) -> None:
        self.points = points
        self.root_seen = False
        self.names = LocalNames()
        self.stack: list[str] = []
        self.text: list[str] = []
        self.collecting = False
        self.size = 0
        # the open gx:Track
        self.track_t: array | None = None
        self.track_lat = array("d")
        self.track_lon = array("d")
        # the open Placemark
        self.when: str | None = None
        self.begin: str | None = None
        self.end_: str | None = None
        self.shapes: list[tuple[str, str]] = []  # ("Point" | "LineString", coordinates text)

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        name = self.names[tag]
        stack = self.stack
        if not stack:
            self.root_seen = name == "kml"
        parent = stack[-1] if stack else ""
        stack.append(name)
        if name == "Track":
            self.track_t = array("d")
            self.track_lat = array("d")
            self.track_lon = array("d")
        elif name == "Placemark":
            self.when = self.begin = self.end_ = None
            self.shapes = []
        self.collecting = (
            (parent == "Track" and name in ("when", "coord"))
            or (name == "coordinates" and parent in ("Point", "LineString"))
            or (name == "when" and parent == "TimeStamp")
            or (name in ("begin", "end") and parent == "TimeSpan")
        )
        if self.collecting:
            self.text = []
            self.size = 0

    def data(self, text: str) -> None:
        if self.collecting:
            self.text.append(text)
            self.size += len(text)
            if self.size > MAX_TEXT:
                raise BadTrack(f"has a <{self.stack[-1]}> longer than {MAX_TEXT:,} characters: not read")

    def end(self, tag: str) -> None:
        stack = self.stack
        name = stack.pop()
        if self.collecting:
            self.collecting = False
            self._field(name, stack, "".join(self.text).strip())
        elif name == "Track" and self.track_t is not None:
            self._emit_track()
        elif name == "Placemark":
            self._emit_placemark()

    def close(self) -> None:
        return None

    def _field(self, name: str, stack: list[str], text: str) -> None:
        parent = stack[-1]
        if parent == "Track" and self.track_t is not None:
            if name == "when":
                self.track_t.append(self.points.time(text))
            else:
                parts = text.split()
                self.track_lon.append(number(parts[0]) if parts else NAN)
                self.track_lat.append(number(parts[1]) if len(parts) > 1 else NAN)
            return
        owner = stack[-2] if len(stack) > 1 else ""
        if owner != "Placemark" and name != "coordinates":
            return  # a TimeStamp of a Folder, a LookAt or a Camera: not a fix's time
        if name == "when":
            self.when = text
        elif name == "begin":
            self.begin = text
        elif name == "end":
            self.end_ = text
        else:
            self.shapes.append((parent, text))

    def _emit_track(self) -> None:
        times, lats, lons = self.track_t, self.track_lat, self.track_lon
        self.track_t = None
        n = min(len(times), len(lats))
        if len(times) != len(lats):
            self.points.notes.append(f"a gx:Track has {len(times)} <when> but {len(lats)} <gx:coord>: "
                                     f"paired the first {n}, the rest dropped")
        points = self.points
        points.new_segment()
        for i in range(n):
            points.add(times[i], lats[i], lons[i])

    def _emit_placemark(self) -> None:
        points = self.points
        for kind, text in self.shapes:
            coords = _coordinates(text)
            if not coords:
                continue
            points.new_segment()
            if kind == "Point":
                lon, lat = coords[0]
                if self.when is not None:
                    points.add(points.time(self.when), lat, lon)
                elif self.begin is not None or self.end_ is not None:
                    for moment in (self.begin, self.end_):
                        if moment is not None:
                            points.add(points.time(moment), lat, lon)
                else:
                    points.add(points.time(None), lat, lon)
            else:
                self._emit_line(coords)
        self.shapes = []

    def _emit_line(self, coords: list[tuple[float, float]]) -> None:
        points = self.points
        begin = points.time(self.begin) if self.begin is not None else NAN
        end = points.time(self.end_) if self.end_ is not None else NAN
        if self.when is not None and self.begin is None and self.end_ is None:
            points.notes.append("a LineString with a single TimeStamp has no time for each of its "
                                f"{len(coords)} points: dropped")
            return
        if math.isnan(begin) or math.isnan(end):  # no span, or only half of one
            for lon, lat in coords:
                points.add(points.time(None), lat, lon)
            return
        if end < begin:
            points.notes.append(f"a LineString's TimeSpan ends before it begins ({self.begin} → "
                                f"{self.end_}): its {len(coords)} points dropped")
            return
        from geoloc.geo import haversine_m

        lon = np.array([c[0] for c in coords])
        lat = np.array([c[1] for c in coords])
        if len(coords) > 1:
            steps = np.nan_to_num(haversine_m(lat[:-1], lon[:-1], lat[1:], lon[1:]), nan=0.0)
            along = np.concatenate([[0.0], np.cumsum(steps)])
            total = along[-1]
            share = along / total if total > 0 else np.linspace(0.0, 1.0, len(coords))
        else:
            share = np.zeros(1)
        times = begin + (end - begin) * share
        for i in range(len(coords)):
            points.add(float(times[i]), float(lat[i]), float(lon[i]))


def _coordinates(text: str) -> list[tuple[float, float]]:
    """KML's ``lon,lat[,alt]`` tuples, separated by white space (spaces after commas tolerated)."""
    out = []
    for item in _COMMA.sub(",", text).split():
        parts = item.split(",")
        out.append((number(parts[0]), number(parts[1]) if len(parts) > 1 else NAN))
    return out
