"""How far each camera's clock is off UTC, from whatever the photos say.

Cameras drift, are set to the wrong zone or to home time abroad, and EXIF ``DateTimeOriginal``
carries no zone: before a photo's time can say where it was, its camera's offset (how far its
clock runs ahead of UTC) must be known. Per camera body, strongest first:

- ``user``: ``--clock NAME=±HH:MM:SS``;
- ``gps-time``: the camera's own photos that carry both a capture time and a GPS time stamp (the
  receiver's UTC); the median of their differences, robust to a stale fix or two;
- ``exif-zone``: the zone the camera wrote with its times (``OffsetTimeOriginal``);
- ``visual``: the camera's photos that geoloc placed from their pixels, aligned with the fixes
  of the trip (tracks, the archive's photos of known time): the offset that puts most of them
  where their pixels say, found by letting each photo vote for the times the trip passed by;
- ``timezone``: the civil time of where the camera's photos were (offline, ``timezonefinder``),
  assuming the camera shows local time. A guess: never certain, so a photo placed with it is
  never ``high``.

An unknown offset stays unknown (``offset_s`` null): time is then not used for that camera.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from geoloc.geo import haversine_m
from geoloc.trips.times import Camera, Reading, format_offset, utc_seconds
from geoloc.trips.times import reading_of

#: Sources whose offset is known to within seconds, enough to place a photo by time.
CERTAIN = ("user", "gps-time", "exif-zone", "visual")
#: Two groups of GPS-time offsets farther apart than this are two clocks, not one drifting clock.
SPLIT_S = 300.0
#: A visually placed photo agrees with the trip at an offset when the trip was this close then.
AGREE_M = 60.0
#: Photos placed by their pixels that must agree on one offset before it is known: fewer could be
#: one look-alike finding the moment the trip passed somewhere like it, and confirming itself.
MIN_VISUAL_VOTES = 3
#: The offset told by fewer placed photos than that: said (``geoloc locate`` reports it, to be
#: confirmed with ``--clock``), never used to place a photo by time.
FEW_VISUAL = "visual-few"


@dataclass
class Shot:
    """One photo as clock evidence: its camera, its capture time as written, the UTC time of
    its own GPS fix, and where it was (its GPS, or where geoloc placed it from its pixels)."""

    path: Path
    camera: Camera
    reading: Optional[Reading]
    gps_utc: Optional[float] = None
    lat: Optional[float] = None
    lon: Optional[float] = None
    #: Where the position came from: "gps" (the photo's own) or "visual" (a confident estimate).
    placed_by: Optional[str] = None
    radius_m: float = 25.0


@dataclass
class Clock:
    camera: Camera
    offset_s: Optional[float] = None
    source: str = "unknown"
    photos: int = 0
    #: How sure the offset is (seconds, about one standard error); None when unknown.
    spread_s: Optional[float] = None
    note: Optional[str] = None
    #: For a ``visual`` clock: the photos whose placement found it. Time placed by this clock is
    #: not independent evidence for them (it came from their own pixels).
    voters: frozenset = frozenset()

    @property
    def certain(self) -> bool:
        return self.offset_s is not None and self.source in CERTAIN

    def known_utc(self, reading: Optional[Reading]) -> Optional[float]:
        """:meth:`utc` when it can be trusted to the second (this clock is known, or the photo
        wrote its own zone), else None: the one rule for what time may place."""
        if reading is None or not (self.certain or reading.zone_s is not None):
            return None
        return self.utc(reading)

    def utc(self, reading: Optional[Reading]) -> Optional[float]:
        """The UTC time of a capture time of this camera: its own zone when it wrote one (a
        phone), else the reading less this clock's offset."""
        if reading is None:
            return None
        if reading.zone_s is not None and self.source != "user":
            return reading.utc_s
        if self.offset_s is None:
            return None
        return reading.clock_s - self.offset_s

    def to_json(self) -> dict:
        return {**self.camera.to_json(),
                "offset_s": None if self.offset_s is None else round(float(self.offset_s), 1),
                "source": self.source, "photos": self.photos,
                "spread_s": None if self.spread_s is None else round(float(self.spread_s), 1),
                "note": self.note}


def solve(shots: Sequence[Shot], overrides: Mapping[str, float] | None = None, *, fixes=None,
          timezones: bool = True) -> dict[str, Clock]:
    """Each camera's clock, by name (:attr:`Camera.name`). ``fixes`` (:class:`geoloc.trips.
    timeline.Fixes`) are positions of known UTC time for the visual alignment."""
    overrides = dict(overrides or {})
    by_camera: dict[str, list[Shot]] = {}
    cameras: dict[str, Camera] = {}
    for shot in shots:
        by_camera.setdefault(shot.camera.name, []).append(shot)
        cameras.setdefault(shot.camera.name, shot.camera)
    clocks = {}
    for name, group in by_camera.items():
        camera = cameras[name]
        if name in overrides:
            clocks[name] = Clock(camera, float(overrides[name]), "user", len(group), 0.0)
            continue
        if not camera.known:
            # Photos that name no camera may come from any number of devices: none of their
            # evidence tells another's clock. Each keeps the zone it wrote, if any.
            clocks[name] = Clock(camera, None, "unknown", len(group), None,
                                 "its photos name no camera (EXIF Make and Model), so they may come from several "
                                 "devices and share no clock; a photo with its own zone still uses it; set "
                                 "--clock 'unknown camera=±HH:MM:SS' if they are one camera's")
            continue
        clock = (_from_gps_time(camera, group) or _from_zone(camera, group)
                 or _from_visual(camera, group, fixes) or (_from_timezone(camera, group) if timezones else None)
                 or Clock(camera, photos=len(group)))
        if clock.note is None and clock.offset_s is None:
            clock.note = _why_unknown(group)
        clocks[name] = clock
    return clocks


def _from_gps_time(camera: Camera, group: Sequence[Shot]) -> Optional[Clock]:
    """The median of the camera's (capture time − GPS time) pairs. A reading that carries its
    zone is compared in UTC (only the clock's drift is left), so a phone crossing zones is one
    clock, not two; the offset is then reported in the zone most of its photos wrote."""
    timed = [s for s in group if s.reading is not None and s.gps_utc is not None]
    if not timed:
        return None
    zones = [s.reading.zone_s for s in timed if s.reading.zone_s is not None]
    pairs = [s.reading.clock_s - (s.reading.zone_s or 0) - s.gps_utc for s in timed]
    values = np.sort(np.asarray(pairs, np.float64))
    # Groups of offsets: a gap wider than SPLIT_S between sorted values starts a new clock.
    cuts = np.nonzero(np.diff(values) > SPLIT_S)[0] + 1
    groups = np.split(values, cuts)
    biggest = max(groups, key=len)
    note = None
    if len(groups) > 1:
        if len(biggest) < 0.75 * len(values):
            shown = ", ".join(format_offset(float(np.median(g))) for g in groups[:3])
            return Clock(camera, None, "unknown", len(values), None,
                         f"its photos' GPS times give offsets {shown}: its clock was changed during the trip, or "
                         f"two bodies share the name {camera.name} without a serial number; set --clock, or keep "
                         "their photos apart")
        note = f"{len(values) - len(biggest)} of {len(values)} GPS time stamps disagree (a stale fix?) and were left out"
    drift = float(np.median(biggest))
    mad = float(np.median(np.abs(biggest - drift))) * 1.4826
    spread = max(mad / np.sqrt(len(biggest)), 1.0) if len(biggest) > 1 else 30.0
    zone = 0.0
    if zones:
        kinds, counts = np.unique(np.asarray(zones), return_counts=True)
        zone = float(kinds[np.argmax(counts)])
        if len(kinds) > 1 and note is None:
            note = "the zone changed during the trip: each photo keeps the one it wrote"
    return Clock(camera, drift + zone, "gps-time", len(biggest), spread, note)


def _from_zone(camera: Camera, group: Sequence[Shot]) -> Optional[Clock]:
    zones = [s.reading.zone_s for s in group if s.reading is not None and s.reading.zone_s is not None]
    if not zones:
        return None
    values, counts = np.unique(np.asarray(zones), return_counts=True)
    note = None if len(values) == 1 else "the zone changed during the trip: each photo keeps its own"
    return Clock(camera, float(values[np.argmax(counts)]), "exif-zone", len(zones), 1.0, note)


def _from_visual(camera: Camera, group: Sequence[Shot], fixes) -> Optional[Clock]:
    """The offset that puts the camera's visually placed photos where the trip was then.

    Each photo votes for the offsets at which a fix lay near where its pixels put it; every
    vote is scored by how many photos it explains (robustly: a wrong match costs a capped
    amount), and the best is refined to the second."""
    if fixes is None or len(fixes) < 2:
        return None
    placed = [s for s in group if s.placed_by == "visual" and s.reading is not None and s.lat is not None]
    if not placed:
        return None
    few = len(placed) < MIN_VISUAL_VOTES
    readings = np.array([s.reading.clock_s for s in placed])
    lats = np.array([s.lat for s in placed])
    lons = np.array([s.lon for s in placed])
    tol = np.array([max(AGREE_M, 2.0 * s.radius_m) for s in placed])
    candidates = []
    for r, la, lo, d in zip(readings, lats, lons, tol):
        near = np.nonzero(haversine_m(la, lo, fixes.lat, fixes.lon) <= d)[0]
        candidates.extend(r - fixes.t[near])
    if not candidates:
        return None
    candidates = np.unique(np.round(np.asarray(candidates)))
    if candidates.size > 5000:
        candidates = candidates[np.linspace(0, candidates.size - 1, 5000).astype(int)]
    costs = np.array([_cost(o, readings, lats, lons, tol, fixes) for o in candidates])
    best = float(candidates[int(np.argmin(costs))])
    fine = best + np.arange(-90.0, 90.5, 1.0)
    fine_costs = np.array([_cost(o, readings, lats, lons, tol, fixes) for o in fine])
    low = fine_costs.min()
    near_best = fine[fine_costs <= low + 1e-6]
    offset = float(np.median(near_best))
    residual = _residuals(offset, readings, lats, lons, fixes)
    agreeing = residual <= tol
    agree = int(np.sum(agreeing))
    if few and agree < len(placed):
        return None  # one or two photos that disagree: nothing to tell
    if not few and (agree < MIN_VISUAL_VOTES or agree < 0.6 * len(placed)):
        return None
    # Rival offsets far from this one that explain as many photos: a loop walked twice.
    rivals = candidates[(np.abs(candidates - offset) > 600) & (costs <= low + 1e-6)]
    if rivals.size:
        return Clock(camera, None, "unknown", len(placed), None,
                     f"its photos fit the trip at several times ({format_offset(offset)}, "
                     f"{format_offset(float(rivals[0]))}): set --clock")
    spread = max(float(near_best.max() - near_best.min()) / 2.0, 1.0)
    voters = frozenset(s.path for s, ok in zip(placed, agreeing) if ok)
    if few:
        # One look-alike could find the moment the trip passed somewhere like it: the offset is
        # told, with how long the trip stayed near that place as its spread, and left to the user.
        return Clock(camera, offset, FEW_VISUAL, agree, spread,
                     f"from {agree} photo{'s' if agree > 1 else ''} placed by {'their' if agree > 1 else 'its'} "
                     f"pixels only (at least {MIN_VISUAL_VOTES} are needed to place photos by time): "
                     f"confirm with --clock", voters=voters)
    return Clock(camera, offset, "visual", agree, spread, voters=voters)


def _positions_at(utc: np.ndarray, fixes):
    lat = np.interp(utc, fixes.t, fixes.lat)
    lon = np.interp(utc, fixes.t, fixes.lon)
    i = np.clip(np.searchsorted(fixes.t, utc), 1, len(fixes) - 1)
    gap = np.minimum(np.abs(utc - fixes.t[i - 1]), np.abs(fixes.t[i] - utc))
    from geoloc.trips.timeline import MAX_EXTRAPOLATE_S, MAX_GAP_S

    outside = (utc < fixes.t[0] - MAX_EXTRAPOLATE_S) | (utc > fixes.t[-1] + MAX_EXTRAPOLATE_S) \
        | ((fixes.t[i] - fixes.t[i - 1]) > MAX_GAP_S) & (gap > MAX_EXTRAPOLATE_S)
    return lat, lon, outside


def _residuals(offset: float, readings, lats, lons, fixes) -> np.ndarray:
    lat, lon, outside = _positions_at(readings - offset, fixes)
    d = haversine_m(lats, lons, lat, lon)
    return np.where(outside, np.inf, d)


def _cost(offset: float, readings, lats, lons, tol, fixes) -> float:
    d = _residuals(offset, readings, lats, lons, fixes)
    return float(np.sum(np.minimum(d / tol, 3.0)))


def _from_timezone(camera: Camera, group: Sequence[Shot]) -> Optional[Clock]:
    """The civil offset where the camera was, if it shows local time: a guess, said as one."""
    where = [s for s in group if s.lat is not None and s.reading is not None]
    if not where:
        return None
    finder = _timezone_finder()
    if finder is None:
        return None
    from datetime import datetime, timezone
    from zoneinfo import ZoneInfo

    offsets = []
    for s in where:
        name = finder.timezone_at(lng=float(s.lon), lat=float(s.lat))
        if not name:
            continue
        try:
            local = datetime.fromtimestamp(s.reading.clock_s, tz=timezone.utc).replace(tzinfo=None)
            delta = ZoneInfo(name).utcoffset(local)
        except Exception:
            continue
        if delta is not None:
            offsets.append(delta.total_seconds())
    if not offsets:
        return None
    values, counts = np.unique(np.asarray(offsets), return_counts=True)
    return Clock(camera, float(values[np.argmax(counts)]), "timezone", len(offsets), None,
                 "a guess from the time zone of where its photos were: if the camera shows home time or "
                 "drifted, set --clock")


@functools.lru_cache(maxsize=1)
def _timezone_finder():
    """One finder for the process (building one reads its data: about half a second)."""
    try:
        from timezonefinder import TimezoneFinder
    except ImportError:
        return None
    return TimezoneFinder()


def _why_unknown(group: Sequence[Shot]) -> str:
    if not any(s.reading is not None for s in group):
        return "its photos carry no capture time"
    return ("none of its photos carries a GPS time stamp or a zone, and fewer than 3 placed confidently by "
            "their pixels agree with the trip; set --clock CAMERA=±HH:MM:SS")


def shots_from_records(records: Iterable) -> list[Shot]:
    """Clock evidence from database records (or anything with their fields): each photo with a
    capture time, with its own GPS position where it has one."""
    shots = []
    for r in records:
        read = reading_of(r)
        if read is None:
            continue
        located = getattr(r, "located", False) and r.lat is not None
        shots.append(Shot(Path(r.path), Camera.of(r), read, utc_seconds(getattr(r, "gps_time", None)),
                          float(r.lat) if located else None, float(r.lon) if located else None,
                          "gps" if located else None))
    return shots
