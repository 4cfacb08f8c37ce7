"""What locating a photo gives: the candidates in rank order and the answer for each query.

These are plain values, separate from how they are computed (:mod:`geoloc.locating.locator`), so that
what writes them out (JSON, CSV, GeoJSON, GPX, XMP, maps) depends on them alone. ``to_json``
gives the SPEC's objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from geoloc.locating.estimate import Estimate
from geoloc.files import json_path_fields
from geoloc.formatting import json_number
from geoloc.geo import haversine_m


@dataclass
class Candidate:
    """A database photo proposed for a query, in rank order; ``distance_m`` from the estimate."""

    rank: int
    path: Path
    lat: float
    lon: float
    score: float  # the cosine similarity of the global descriptors, whatever the rank
    distance_m: float | None = None
    #: Geometric verification: consistent matches, and the re-ranking score they gave (None:
    #: not verified — beyond ``--rerank-top``, no map, or ``--no-rerank``).
    inliers: int | None = None
    fused: float | None = None
    verifier: str | None = None  # whose inliers: geoloc.retrieval.rerank.VERIFIERS, or a learned stage's name

    def to_json(self) -> dict:
        return {
            "rank": self.rank,
            **json_path_fields(self.path),
            "lat": json_number(self.lat, 7),
            "lon": json_number(self.lon, 7),
            "score": json_number(self.score, 6),
            "distance_m": json_number(self.distance_m, 2),
            "verified": None if self.inliers is None else {"inliers": self.inliers,
                                                            "score": json_number(self.fused, 6),
                                                            "verifier": self.verifier},
        }


@dataclass
class LocateResult:
    query: Path
    estimate: Estimate | None = None
    candidates: list[Candidate] = field(default_factory=list)
    query_gps: tuple[float, float] | None = None
    error: str | None = None
    #: What re-ranking could not do (a candidate whose file is gone, in an older database).
    notes: list[str] = field(default_factory=list)
    #: When the query photo was taken (its EXIF, ISO 8601, with the UTC offset when known).
    taken_at: str | None = None
    #: That time in UTC, once its camera's clock is known (geoloc.trips); None otherwise.
    taken_at_utc: str | None = None
    #: The camera body (EXIF Make, Model, serial number) and the UTC time of the photo's own
    #: GPS fix: what the trips' clocks are solved from.
    camera_make: str | None = None
    camera_model: str | None = None
    camera_serial: str | None = None
    gps_time: str | None = None
    #: Which EXIF tag ``taken_at`` came from ("modified": DateTime alone, not used by trips).
    time_tag: str | None = None

    def take_time(self, source) -> None:
        """The capture time and camera of a database record or a photo's metadata."""
        self.taken_at = getattr(source, "taken_at", None)
        for name in ("camera_make", "camera_model", "camera_serial", "gps_time", "time_tag"):
            setattr(self, name, getattr(source, name, None))

    @property
    def camera(self) -> str | None:
        """The camera's name as ``geoloc clocks`` and ``--clock`` give it; None when EXIF names none."""
        from geoloc.formatting import camera_name

        if not (self.camera_make or self.camera_model):
            return None
        return camera_name(self.camera_make, self.camera_model, self.camera_serial)

    @property
    def warnings(self) -> list[str]:
        """Why the estimate should not be trusted as it stands, and what re-ranking could not do."""
        return (list(self.estimate.warnings) if self.estimate is not None else []) + list(self.notes)

    @property
    def error_m(self) -> float | None:
        """The estimate's distance from the query's own GPS, when both exist."""
        if self.estimate is None or self.query_gps is None:
            return None
        return float(haversine_m(self.estimate.lat, self.estimate.lon, *self.query_gps))

    @property
    def top1_error_m(self) -> float | None:
        if not self.candidates or self.query_gps is None:
            return None
        c = self.candidates[0]
        return float(haversine_m(c.lat, c.lon, *self.query_gps))

    def to_json(self) -> dict:
        """The SPEC's object; ``estimate`` carries extra fields (support, agreement, confidence)."""
        return {
            **json_path_fields(self.query, "query"),
            "estimate": self.estimate.to_json() if self.estimate else None,
            "candidates": [c.to_json() for c in self.candidates],
            "query_gps": (
                {"lat": json_number(self.query_gps[0], 7), "lon": json_number(self.query_gps[1], 7)}
                if self.query_gps
                else None
            ),
            "error_m": json_number(self.error_m, 2),
            "error": self.error,
            "warnings": self.warnings,
            "taken_at": self.taken_at,
            "taken_at_utc": self.taken_at_utc,
            "camera": self.camera,
        }
