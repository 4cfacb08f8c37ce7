"""One evaluation split: database and query images with their true positions, and the distances
between them as the benchmarks define them (planar UTM when both sides have it, else great circle).

Every dataset reader (:mod:`geoloc.evaluation.datasets`, :mod:`geoloc.evaluation.dbstruct`)
produces a :class:`Split`; the metrics only ever see this.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geoloc.errors import PhotoError
from geoloc.geo import EARTH_RADIUS_M, haversine_m


@dataclass
class Positions:
    """Ground-truth positions of a list of images.

    ``lat``/``lon`` are NaN where unknown; ``utm`` is an (N, 2) east/north array in metres when
    every image has UTM coordinates in one zone, else None.
    """

    lat: np.ndarray
    lon: np.ndarray
    utm: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.lat)

    @property
    def has_latlon(self) -> bool:
        return bool(len(self.lat)) and bool(np.all(np.isfinite(self.lat)) and np.all(np.isfinite(self.lon)))


@dataclass
class Split:
    """One evaluation split: database images and query images with their true positions."""

    name: str
    kind: str  # "exif", "utm-names", "dbstruct", "csv"
    source: str  # what identifies the dataset on disk (for cache keys and reports)
    db_paths: list[Path]
    db: Positions
    query_paths: list[Path]
    queries: Positions
    threshold_m: float | None = None  # the dataset's own positive radius (posDistThr), if any
    problems: list[PhotoError] = field(default_factory=list)
    queries_without_gps: int = 0  # query photos left out for want of a position (EXIF form)

    @property
    def metric(self) -> str:
        """``utm`` when both sides share planar UTM coordinates, else ``geo`` (great circle)."""
        if self.db.utm is not None and self.queries.utm is not None:
            return "utm"
        return "geo"

    def fingerprint(self) -> str:
        """Identifies the split's content: same images and same truth give the same key."""
        h = hashlib.sha256()
        h.update(f"{self.kind}\n".encode())
        for paths, pos in ((self.db_paths, self.db), (self.query_paths, self.queries)):
            h.update(b"--\n")
            for i, p in enumerate(paths):
                h.update(f"{p}\t{_fmt(pos.lat[i])}\t{_fmt(pos.lon[i])}".encode())
                if pos.utm is not None:
                    h.update(f"\t{pos.utm[i, 0]:.3f}\t{pos.utm[i, 1]:.3f}".encode())
                h.update(b"\n")
        return h.hexdigest()

    def distances_m(self, query: int, db_index: Sequence[int]) -> np.ndarray:
        """Distances in metres from query ``query`` to the database images ``db_index``."""
        db_index = np.asarray(db_index, dtype=np.int64)
        if self.metric == "utm":
            diff = self.db.utm[db_index] - self.queries.utm[query]
            return np.hypot(diff[:, 0], diff[:, 1])
        return np.atleast_1d(
            haversine_m(self.queries.lat[query], self.queries.lon[query], self.db.lat[db_index], self.db.lon[db_index])
        ).astype(np.float64)

    def positives(self, threshold_m: float) -> list[np.ndarray]:
        """For each query, the database images within ``threshold_m`` (sorted by distance)."""
        from scipy.spatial import cKDTree

        if self.metric == "utm":
            db_xyz, q_xyz, radius = self.db.utm, self.queries.utm, threshold_m
        else:
            db_xyz, q_xyz = _ecef(self.db.lat, self.db.lon), _ecef(self.queries.lat, self.queries.lon)
            # a chord is shorter than its arc: the arc's chord as the search radius, exactly
            radius = 2 * EARTH_RADIUS_M * math.sin(min(threshold_m / (2 * EARTH_RADIUS_M), math.pi / 2))
        if len(db_xyz) == 0:
            return [np.zeros(0, dtype=np.int64) for _ in range(len(q_xyz))]
        tree = cKDTree(db_xyz)
        out = []
        for i, hits in enumerate(tree.query_ball_point(q_xyz, r=radius * (1 + 1e-12))):
            hits = np.asarray(sorted(hits), dtype=np.int64)
            if len(hits):
                d = self.distances_m(i, hits)
                keep = d <= threshold_m
                hits, d = hits[keep], d[keep]
                hits = hits[np.argsort(d, kind="stable")]
            out.append(hits)
        return out


def _fmt(v: float) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.7f}"


def _ecef(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    la, lo = np.radians(lat), np.radians(lon)
    return EARTH_RADIUS_M * np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)
