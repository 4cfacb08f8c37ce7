"""Google Takeout location history, in every form Google has exported it.

- ``Records.json`` (and the older ``Location History.json``): ``{"locations": [{"latitudeE7",
  "longitudeE7", "accuracy", "timestamp" | "timestampMs"}, …]}``, one segment. Old exports
  wrote some E7 values as unsigned 32-bit numbers (a latitude of 4 294 967 296 too much); they
  are wrapped back, as Google's own readers do.
- The Timeline export (2024 on, from the phone's settings or Takeout): ``{"semanticSegments":
  […], "rawSignals": […]}``. A ``timelinePath`` is a segment of ``{"point": "48.1°, 11.5°",
  "time"}``; a ``visit`` gives a fix at its place at ``startTime`` and at ``endTime`` (one
  segment: a stay); an ``activity`` its start point at ``startTime`` and its end point at
  ``endTime``; ``rawSignals`` positions (``LatLng``, ``accuracyMeters``, ``timestamp``) are one
  segment.
- The phone's own export (Android, on-device Timeline): a top-level list of the same segments,
  written differently: ``"point": "geo:48.1,11.5"`` with ``durationMinutesOffsetFromStartTime``,
  ``"placeLocation": "geo:…"``, ``"start": "geo:…"``.
- Semantic Location History (monthly ``2019_JANUARY.json``): ``{"timelineObjects": […]}`` with
  ``placeVisit`` and ``activitySegment`` (its ``simplifiedRawPath`` points too).

Files are walked one array element at a time (:mod:`geoloc.trips._jsonstream`), never loaded
whole. Times with zones (``+01:00``, ``Z``) are converted to UTC.
"""

from __future__ import annotations

import io
import math
from typing import Any, BinaryIO

from geoloc.trips._common import NAN, BadTrack, Points, number, parse_time
from geoloc.trips._jsonstream import JsonStream

_KNOWN = ("locations", "semanticSegments", "rawSignals", "timelineObjects")


def read_takeout(stream: BinaryIO) -> Points:
    """Every fix of a Takeout location-history JSON document, in file order."""
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    try:
        return _walk(JsonStream(text))
    except UnicodeDecodeError as exc:
        raise BadTrack(f"is not UTF-8 text ({exc.reason})") from None
    finally:
        text.detach()


def _walk(js: JsonStream) -> Points:
    points = Points()
    reader = _Reader(points)
    first = js.peek()
    if first == "[":  # the phone's export: a list of segments
        for element in js.items():
            reader.segment(element)
    elif first == "{":
        found = False
        for key in js.keys():
            handler = {"locations": reader.record, "semanticSegments": reader.segment,
                       "rawSignals": reader.signal, "timelineObjects": reader.timeline_object}.get(key)
            if handler is None:
                js.skip()
                continue
            if js.peek() != "[":
                js.fail(f'"{key}" is not a list')
            found = True
            if key in ("locations", "rawSignals"):
                points.new_segment()  # one stream of fixes
            for element in js.items():
                handler(element)
        if not found:
            raise BadTrack("is JSON but not a Google Takeout location history (none of "
                           + ", ".join(f'"{k}"' for k in _KNOWN) + ")")
    else:
        js.fail(f"expected an object or a list, found {first!r}" if first else "no JSON value")
    if not js.at_end():
        js.fail("more text after the end of the document")
    if reader.odd:
        points.notes.append(f"{reader.odd} entries that are not location records skipped")
    return points


class _Reader:
    """One handler per kind of element; each appends its fixes to ``points``."""

    def __init__(self, points: Points) -> None:
        self.points = points
        self.odd = 0

    # Records.json ------------------------------------------------------------------------
    def record(self, loc: Any) -> None:
        try:  # the usual record, on the fast path (10^6 of them in a file)
            lat, lon = loc["latitudeE7"] * 1e-7, loc["longitudeE7"] * 1e-7
            stamp = loc.get("timestamp")
            if stamp is None:
                seconds, zoned = int(loc["timestampMs"]) / 1000.0, True
            else:
                seconds, zoned = parse_time(stamp)
            if not zoned or math.isnan(seconds) or not -90.0 <= lat <= 90.0 or not -180.0 <= lon <= 180.0:
                raise ValueError
            accuracy = float(loc.get("accuracy", NAN))
        except (KeyError, TypeError, ValueError, AttributeError):
            if not isinstance(loc, dict):
                self.odd += 1
                return
            stamp = loc.get("timestamp")
            seconds = self._ms(loc.get("timestampMs")) if stamp is None else self.points.time(_str(stamp))
            lat = _e7(loc.get("latitudeE7"), 900_000_000)
            lon = _e7(loc.get("longitudeE7"), 1_800_000_000)
            accuracy = _num(loc.get("accuracy"))
        self.points.add(seconds, lat, lon, accuracy)

    # Timeline export and the phone's export ---------------------------------------------------
    def segment(self, seg: Any) -> None:
        if not isinstance(seg, dict):
            self.odd += 1
            return
        points = self.points
        start, end = seg.get("startTime"), seg.get("endTime")
        path = seg.get("timelinePath")
        if isinstance(path, list):
            points.new_segment()
            base = parse_time(start)[0] if isinstance(start, str) else NAN
            for p in path:
                if not isinstance(p, dict):
                    self.odd += 1
                    continue
                lat, lon = _latlng(p.get("point"))
                if "time" in p:
                    t = points.time(_str(p["time"]))
                else:
                    t = base + 60.0 * number(_str(p.get("durationMinutesOffsetFromStartTime")))
                    if math.isnan(t):
                        points.bad_times += 1
                        points.bad_time_example = points.bad_time_example or f"{start} + {p.get('durationMinutesOffsetFromStartTime')} min"
                points.add(t, lat, lon)
        visit = seg.get("visit")
        if isinstance(visit, dict):
            candidate = visit.get("topCandidate")
            place = candidate.get("placeLocation") if isinstance(candidate, dict) else None
            self._pair(start, _where(place), end, _where(place))
        activity = seg.get("activity")
        if isinstance(activity, dict):
            self._pair(start, _where(activity.get("start")), end, _where(activity.get("end")))

    def signal(self, signal: Any) -> None:
        if not isinstance(signal, dict):
            self.odd += 1
            return
        position = signal.get("position")
        if isinstance(position, dict):  # wifi scans and activity records carry no position
            lat, lon = _latlng(position.get("LatLng", position.get("latLng")))
            self.points.add(self.points.time(_str(position.get("timestamp"))), lat, lon,
                            _num(position.get("accuracyMeters")))

    # Semantic Location History ----------------------------------------------------------------
    def timeline_object(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            self.odd += 1
            return
        visit, move = obj.get("placeVisit"), obj.get("activitySegment")
        if isinstance(visit, dict):
            where = _e7_place(visit.get("location"))
            start, end = self._duration(visit.get("duration"))
            self._pair(start, where, end, where)
        elif isinstance(move, dict):
            start, end = self._duration(move.get("duration"))
            self._pair(start, _e7_place(move.get("startLocation")), end, _e7_place(move.get("endLocation")))
            raw = move.get("simplifiedRawPath")
            path = raw.get("points") if isinstance(raw, dict) else None
            if isinstance(path, list):
                self.points.new_segment()
                for p in path:
                    if isinstance(p, dict):
                        stamp = p.get("timestamp")
                        t = self._ms(p.get("timestampMs")) if stamp is None else self.points.time(stamp)
                        self.points.add(t, _e7(p.get("latE7"), 900_000_000), _e7(p.get("lngE7"), 1_800_000_000),
                                        _num(p.get("accuracyMeters")))
        else:
            self.odd += 1

    def _duration(self, duration: Any) -> tuple[Any, Any]:
        """(start, end) of a Semantic Location History ``duration``: ISO text, or a float of ms."""
        if not isinstance(duration, dict):
            return None, None
        out = []
        for key in ("startTimestamp", "endTimestamp"):
            value = duration.get(key)
            out.append(value if value is not None else self._ms(duration.get(key + "Ms")))
        return out[0], out[1]

    # helpers ---------------------------------------------------------------------------------
    def _pair(self, start: Any, first: tuple[float, float], end: Any, last: tuple[float, float]) -> None:
        """Two fixes, one segment: ``first`` at ``start``, ``last`` at ``end`` (times as text or seconds)."""
        points = self.points
        points.new_segment()
        for moment, (lat, lon) in ((start, first), (end, last)):
            t = moment if isinstance(moment, float) else points.time(_str(moment))
            points.add(t, lat, lon)

    def _ms(self, value: Any) -> float:
        """Milliseconds since the epoch (``"1641997104190"``) as seconds; NaN, counted, if none."""
        if value is None:
            self.points.untimed += 1
            return NAN
        ms = number(_str(value))
        if math.isnan(ms):
            self.points.bad_times += 1
            self.points.bad_time_example = self.points.bad_time_example or str(value)[:40]
            return NAN
        return ms / 1000.0


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else (None if value is None or isinstance(value, (dict, list, bool))
                                                 else str(value))


def _num(value: Any) -> float:
    return number(_str(value))


def _e7(value: Any, limit: int) -> float:
    """Degrees from an E7 integer, wrapping the unsigned 32-bit values of old exports."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return NAN
    if value > limit:
        value -= 1 << 32
    return value * 1e-7


def _e7_place(place: Any) -> tuple[float, float]:
    if not isinstance(place, dict):
        return NAN, NAN
    return _e7(place.get("latitudeE7"), 900_000_000), _e7(place.get("longitudeE7"), 1_800_000_000)


def _where(place: Any) -> tuple[float, float]:
    """A position given as ``{"latLng": "48.1°, 11.5°"}`` or as ``"geo:48.1,11.5"``."""
    if isinstance(place, dict):
        place = place.get("latLng", place.get("LatLng"))
    return _latlng(place)


def _latlng(text: Any) -> tuple[float, float]:
    """``"48.1234567°, 11.5°"`` or ``"geo:48.1,11.5"`` → (lat, lon); NaN when unreadable."""
    if not isinstance(text, str):
        return NAN, NAN
    text = text.strip()
    if text[:4].lower() == "geo:":
        text = text[4:].partition(";")[0]
    parts = text.replace("°", "").split(",")
    if len(parts) < 2:
        return NAN, NAN
    return number(parts[0].strip()), number(parts[1].strip())
