"""GPX 1.0 and 1.1: tracks, routes and waypoints that carry times.

What GPS loggers, Garmin devices and phone apps (OsmAnd, Strava, GPSLogger, Komoot) write:

- ``trk/trkseg/trkpt``: each ``trkseg`` is a segment (a device starts a new one where it lost
  the signal or was paused: never interpolated across);
- ``rte/rtept``: a route is a segment when its points carry ``<time>`` (planned routes do not);
- ``wpt``: each waypoint with a ``<time>`` is a fix of its own (a segment of one point).

Only a point's direct children count (``<time>``, ``<hdop>``, ``<pdop>``), so a ``time`` in
``<metadata>`` or inside ``<extensions>`` (Garmin's TrackPointExtension and the like) is not
taken for the fix's. Namespaced (``xmlns="http://www.topografix.com/GPX/1/1"``) or not, and any
prefix. ``hdop`` (else ``pdop``) gives the accuracy: :data:`UERE_M` × DOP.
"""

from __future__ import annotations

import math
from typing import BinaryIO

from geoloc.trips._common import NAN, BadTrack, LocalNames, Points, number, parse_xml

#: User-equivalent range error of a consumer GPS receiver, metres: accuracy ≈ UERE × DOP.
UERE_M = 5.0

_POINTS = frozenset(("trkpt", "rtept", "wpt"))
_SEGMENTS = frozenset(("trk", "trkseg", "rte"))  # trk too: points written outside a trkseg
_FIELDS = frozenset(("time", "hdop", "pdop"))


def read_gpx(stream: BinaryIO) -> Points:
    """Every fix of a GPX document, in file order (times NaN where missing)."""
    target = _Gpx()
    parse_xml(stream, target)
    if not target.root_seen:
        raise BadTrack("is XML but not GPX (its root element is not <gpx>)")
    return target.points


class _Gpx:
    """Parser callbacks: one point's attributes and child texts at a time, nothing more."""

    def __init__(self) -> None:
        self.points = Points()
        self.root_seen = False
        self.names = LocalNames()
        self.depth = 0
        self.point_depth = 0  # depth of the open point element, 0 outside one
        self.lat = self.lon = NAN
        self.fields: dict[str, str] = {}
        self.text: list[str] = []
        self.collecting = False

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        self.depth += 1
        name = self.names[tag]
        if self.depth == 1:
            self.root_seen = name == "gpx"
        if self.point_depth:
            self.collecting = self.depth == self.point_depth + 1 and name in _FIELDS
            if self.collecting:
                self.text = []
        elif name in _POINTS:
            self.point_depth = self.depth
            self.lat = number(attrib.get("lat"))
            self.lon = number(attrib.get("lon"))
            self.fields = {}
            if name == "wpt":
                self.points.new_segment()
        elif name in _SEGMENTS:
            self.points.new_segment()

    def data(self, text: str) -> None:
        if self.collecting:
            self.text.append(text)

    def end(self, tag: str) -> None:
        if self.collecting:
            self.fields[self.names[tag]] = "".join(self.text)
            self.collecting = False
        elif self.depth == self.point_depth:
            self.point_depth = 0
            self._emit()
        self.depth -= 1

    def _emit(self) -> None:
        fields = self.fields
        dop = number(fields.get("hdop"))
        if math.isnan(dop):
            dop = number(fields.get("pdop"))
        points = self.points
        points.add(points.time(fields.get("time")), self.lat, self.lon, UERE_M * dop if dop >= 0 else NAN)

    def close(self) -> None:
        return None
