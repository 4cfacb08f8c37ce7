"""Where a photo was by its time: the fixes of a trip (GPS tracks and the archive's own GPS
photos), and a position between them with an honest radius.

Between two fixes A (time t0) and B (t1), a traveller who never went faster than ``v`` was,
at time t, within ``v·(t−t0)`` of A and ``v·(t1−t)`` of B, and within the ellipse whose foci
are A and B and whose axis is ``v·(t1−t0)``. The radius is the smallest of those three
distances (plus the fixes' own accuracy): not a strict bound around the interpolated point, but
one that holds for anyone roughly on their way between two fixes, which the benchmark checks
(docs/trips.md): 30 s from a fix on foot is
± a few tens of metres; a photo two hours from any fix is not placed by time at all. ``v`` is
the larger of a brisk walk and 1.5 times the speed the fixes themselves show, so a car or a
train widens the radius instead of breaking it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from geoloc.geo import haversine_m

#: A brisk walk (m/s): the least speed a radius allows for.
WALK_MPS = 2.0
#: Fixes farther apart in time are not interpolated between (exiftool's GeoMaxIntSecs is 1800).
MAX_GAP_S = 1800.0
#: How long before the first or after the last fix a photo is still placed (at that fix).
MAX_EXTRAPOLATE_S = 300.0
#: A fix without an accuracy of its own (a consumer receiver, a phone).
DEFAULT_ACCURACY_M = 10.0


@dataclass
class Fixes:
    """Positions at known UTC times, sorted by time. ``segment`` tells which fixes may be
    interpolated between: two track points of different segments never are (a gap the
    logger recorded); archive photos carry segment -1 and join any neighbour. ``kind`` is
    "track" or "time" (an archive photo's fix); ``label`` names the file behind each fix."""

    t: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lat: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lon: np.ndarray = field(default_factory=lambda: np.zeros(0))
    accuracy_m: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    segment: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    kind: np.ndarray = field(default_factory=lambda: np.zeros(0, "U5"))
    label: list = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.t.size)

    @classmethod
    def build(cls, track=None, archive: Sequence[tuple[float, float, float, Optional[float], Path]] = ()) -> "Fixes":
        """From a :class:`geoloc.trips.tracks.Track` and the archive's ``(utc, lat, lon,
        accuracy, photo)`` fixes."""
        parts_t, parts_lat, parts_lon, parts_acc, parts_seg, parts_kind, labels = [], [], [], [], [], [], []
        if track is not None and len(track):
            n = len(track)
            parts_t.append(np.asarray(track.t, np.float64))
            parts_lat.append(np.asarray(track.lat, np.float64))
            parts_lon.append(np.asarray(track.lon, np.float64))
            acc = np.asarray(track.accuracy_m, np.float32)
            parts_acc.append(np.where(np.isfinite(acc), acc, DEFAULT_ACCURACY_M).astype(np.float32))
            parts_seg.append(np.asarray(track.segment, np.int64))
            parts_kind.append(np.full(n, "track"))
            source = track.sources[0] if getattr(track, "sources", ()) else None
            labels.extend([source] * n)
        if archive:
            arr = list(archive)
            parts_t.append(np.array([a[0] for a in arr], np.float64))
            parts_lat.append(np.array([a[1] for a in arr], np.float64))
            parts_lon.append(np.array([a[2] for a in arr], np.float64))
            parts_acc.append(np.array([a[3] if a[3] else DEFAULT_ACCURACY_M for a in arr], np.float32))
            parts_seg.append(np.full(len(arr), -1, np.int64))
            parts_kind.append(np.full(len(arr), "time"))
            labels.extend(a[4] for a in arr)
        if not parts_t:
            return cls()
        t = np.concatenate(parts_t)
        order = np.argsort(t, kind="stable")
        return cls(t=t[order], lat=np.concatenate(parts_lat)[order], lon=np.concatenate(parts_lon)[order],
                   accuracy_m=np.concatenate(parts_acc)[order], segment=np.concatenate(parts_seg)[order],
                   kind=np.concatenate(parts_kind)[order], label=[labels[i] for i in order])

    def without(self, label) -> "Fixes":
        """These fixes less those of one photo (a query placed against the others)."""
        keep = [i for i, x in enumerate(self.label) if x != label]
        if len(keep) == len(self.label):
            return self
        idx = np.array(keep, np.int64)
        return Fixes(self.t[idx], self.lat[idx], self.lon[idx], self.accuracy_m[idx], self.segment[idx],
                     self.kind[idx], [self.label[i] for i in keep])


@dataclass
class TimePlace:
    """A position from time alone."""

    lat: float
    lon: float
    radius_m: float
    #: Seconds to the nearest fix.
    gap_s: float
    #: "track" when a track fix is among the two it rests on, else "time" (archive photos).
    evidence: str
    #: The fixes it rests on (one when placed at the nearest fix), as labels.
    between: tuple = ()


def place(fixes: Fixes, utc: float, *, max_gap_s: float = MAX_GAP_S,
          max_extrapolate_s: float = MAX_EXTRAPOLATE_S, uncertainty_s: float = 0.0) -> Optional[TimePlace]:
    """Where the trip was at ``utc``, or None when no fix is near enough in time.

    ``uncertainty_s`` is how far off the time itself may be (a clock solved to ± a few
    seconds): the radius allows for travel during it."""
    n = len(fixes)
    if n == 0 or not np.isfinite(utc):
        return None
    i = int(np.searchsorted(fixes.t, utc))
    before = i - 1 if i > 0 else None
    after = i if i < n else None
    if before is not None and after is not None and _joined(fixes, before, after) \
            and fixes.t[after] - fixes.t[before] <= max_gap_s:
        return _between(fixes, before, after, utc, uncertainty_s)
    # Outside the fixes, or across a gap: only next to a fix.
    near = [j for j in (before, after) if j is not None]
    j = min(near, key=lambda k: abs(fixes.t[k] - utc))
    gap = abs(fixes.t[j] - utc)
    if gap > max_extrapolate_s:
        return None
    radius = float(fixes.accuracy_m[j]) + WALK_MPS * (gap + uncertainty_s)
    return TimePlace(float(fixes.lat[j]), float(fixes.lon[j]), radius, float(gap), _evidence(fixes, (j,)),
                     (fixes.label[j],))


def _joined(fixes: Fixes, a: int, b: int) -> bool:
    sa, sb = int(fixes.segment[a]), int(fixes.segment[b])
    return sa < 0 or sb < 0 or sa == sb


def _between(fixes: Fixes, a: int, b: int, utc: float, uncertainty_s: float) -> TimePlace:
    t0, t1 = float(fixes.t[a]), float(fixes.t[b])
    span = max(t1 - t0, 1e-6)
    w = min(max((utc - t0) / span, 0.0), 1.0)
    lat = float(fixes.lat[a] + w * (fixes.lat[b] - fixes.lat[a]))
    lon = float(fixes.lon[a] + w * (fixes.lon[b] - fixes.lon[a]))
    apart = float(haversine_m(fixes.lat[a], fixes.lon[a], fixes.lat[b], fixes.lon[b]))
    speed = max(WALK_MPS, 1.5 * apart / span)
    d0 = speed * (max(utc - t0, 0.0) + uncertainty_s)
    d1 = speed * (max(t1 - utc, 0.0) + uncertainty_s)
    axis = speed * (span + 2 * uncertainty_s)
    ellipse = 0.5 * float(np.sqrt(max(axis * axis - apart * apart, 0.0)))
    accuracy = float(max(fixes.accuracy_m[a], fixes.accuracy_m[b]))
    radius = accuracy + min(d0, d1, ellipse)
    gap = float(min(abs(utc - t0), abs(t1 - utc)))
    return TimePlace(lat, lon, radius, gap, _evidence(fixes, (a, b)), (fixes.label[a], fixes.label[b]))


def _evidence(fixes: Fixes, idx: tuple) -> str:
    return "track" if any(fixes.kind[i] == "track" for i in idx) else "time"
