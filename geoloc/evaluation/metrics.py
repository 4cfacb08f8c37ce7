"""Recall@N and position-error statistics.

Recall@N follows the place-recognition literature (NetVLAD, CosPlace): a query counts as
recognised at N when at least one of its top N retrieved database images lies within the
threshold of its true position. Every query with ground truth is in the denominator, including
queries that have no database image within the threshold (they can never be recognised); how many
there are is reported beside the figures so that a reader can tell.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

RECALL_NS: tuple[int, ...] = (1, 5, 10, 20)


@dataclass
class Retrieved:
    """One retrieved database image, with its distance from the query's true position."""

    rank: int
    path: str
    lat: float | None
    lon: float | None
    score: float
    truth_distance_m: float


@dataclass
class QueryOutcome:
    """What happened to one query: its truth, its ranked candidates, its position estimate."""

    query: str
    true_lat: float | None
    true_lon: float | None
    candidates: list[Retrieved] = field(default_factory=list)
    estimate_lat: float | None = None
    estimate_lon: float | None = None
    radius_m: float | None = None
    error_m: float | None = None
    has_positive: bool | None = None  # a database image lies within the threshold
    error: str | None = None  # the query could not be used (unreadable photo)
    confidence: str | None = None  # as ``geoloc locate`` would say it ("high", "medium", "low")
    verification: str | None = None  # the re-ranked top-1's verdict, None without re-ranking

    @property
    def scored(self) -> bool:
        return self.error is None

    def truth_distances(self) -> np.ndarray:
        return np.array([c.truth_distance_m for c in self.candidates], dtype=np.float64)


def first_hit_rank(distances_m: Sequence[float], threshold_m: float) -> int | None:
    """1-based rank of the first candidate within the threshold, or None."""
    for i, d in enumerate(distances_m):
        if d is not None and math.isfinite(d) and d <= threshold_m:
            return i + 1
    return None


def recall_at(
    ranked_distances: Iterable[Sequence[float]], threshold_m: float, ns: Sequence[int] = RECALL_NS
) -> dict[int, float]:
    """Fraction of queries with a candidate within ``threshold_m`` among their top N, for each N.

    ``ranked_distances``: per query, the distances (metres) of its candidates from its true
    position, best-ranked first. A query with fewer than N candidates is judged on those it has.
    No queries gives NaN, never a division error.
    """
    firsts = [first_hit_rank(d, threshold_m) for d in ranked_distances]
    if not firsts:
        return {n: math.nan for n in ns}
    total = len(firsts)
    return {n: sum(1 for r in firsts if r is not None and r <= n) / total for n in ns}


def recall_curve(ranked_distances: Iterable[Sequence[float]], threshold_m: float, max_n: int) -> np.ndarray:
    """Recall@N for N = 1 … max_n (index 0 is N = 1)."""
    firsts = [first_hit_rank(d, threshold_m) for d in ranked_distances]
    if not firsts:
        return np.full(max_n, np.nan)
    counts = np.zeros(max_n + 2, dtype=np.int64)
    for r in firsts:
        if r is not None and r <= max_n:
            counts[r] += 1
    return np.cumsum(counts[1 : max_n + 1]) / len(firsts)


def error_stats(errors_m: Iterable[float | None]) -> dict[str, float | None]:
    """Median, mean and 90th percentile of the position errors that exist (None when none do)."""
    e = np.array([x for x in errors_m if x is not None and math.isfinite(x)], dtype=np.float64)
    if e.size == 0:
        return {"median_error_m": None, "mean_error_m": None, "p90_error_m": None}
    return {
        "median_error_m": float(np.median(e)),
        "mean_error_m": float(np.mean(e)),
        "p90_error_m": float(np.percentile(e, 90)),
    }


def within_fraction(errors_m: Iterable[float | None], radius_m: float) -> float | None:
    """Fraction of estimates within ``radius_m`` of the truth (queries without an estimate fail)."""
    e = [x for x in errors_m]
    if not e:
        return None
    return sum(1 for x in e if x is not None and math.isfinite(x) and x <= radius_m) / len(e)


CONFIDENCE_LEVELS = ("high", "medium", "low")


def calibration(outcomes: Iterable[QueryOutcome]) -> dict[str, dict]:
    """Per confidence level: how many queries got it, and the share whose truth lies inside the
    estimate's radius (the promise of ``high``: at least 90 %, docs/estimate.md)."""
    table = {}
    for level in CONFIDENCE_LEVELS:
        mine = [o for o in outcomes if o.scored and o.confidence == level and o.error_m is not None]
        inside = sum(1 for o in mine if o.radius_m is not None and o.error_m <= o.radius_m)
        radii = [o.radius_m for o in mine if o.radius_m is not None]
        table[level] = {
            "queries": len(mine),
            "within_radius": inside / len(mine) if mine else None,
            "median_radius_m": float(np.median(radii)) if radii else None,
        }
    return table


@dataclass
class Summary:
    """The figures of one evaluation run."""

    queries: int  # queries scored (readable, with ground truth)
    threshold_m: float
    recall: dict[int, float]
    median_error_m: float | None
    mean_error_m: float | None
    p90_error_m: float | None
    queries_without_positive: int | None
    failed: int  # queries that could not be read
    curve: np.ndarray  # recall@1..max_n
    calibration: dict[str, dict] = field(default_factory=dict)  # see ``calibration``


def summarize(outcomes: Sequence[QueryOutcome], threshold_m: float, ns: Sequence[int] = RECALL_NS, max_n: int | None = None) -> Summary:
    scored = [o for o in outcomes if o.scored]
    dists = [o.truth_distances() for o in scored]
    max_n = max_n or max(max(ns), max((len(d) for d in dists), default=0))
    stats = error_stats(o.error_m for o in scored)
    known = [o.has_positive for o in scored if o.has_positive is not None]
    return Summary(
        queries=len(scored),
        threshold_m=float(threshold_m),
        recall=recall_at(dists, threshold_m, ns),
        median_error_m=stats["median_error_m"],
        mean_error_m=stats["mean_error_m"],
        p90_error_m=stats["p90_error_m"],
        queries_without_positive=(sum(1 for k in known if not k) if len(known) == len(scored) else None),
        failed=len(outcomes) - len(scored),
        curve=recall_curve(dists, threshold_m, max_n),
        calibration=calibration(scored),
    )
