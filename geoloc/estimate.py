"""The position estimate and how far to trust it: pure numpy on candidate positions and scores.

Taking the single most similar photo's position ("top-1") throws away what the other top
candidates say. Place-recognition errors are mostly isolated look-alikes, while the right place
tends to return several database photos that agree with each other in space. So the estimate is
the similarity-weighted centre of the largest spatially consistent group among the top
candidates, and the group's spread gives the uncertainty radius. The method, its parameters and
its measured accuracy are documented in ``docs/estimate.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from geoloc.formatting import json_number
from geoloc.geo import from_local_m, to_local_m


@dataclass
class EstimateConfig:
    """How candidates are grouped and weighted; defaults measured on ``shared/data/lund``."""

    # Candidates closer than this to a group's centre agree on the place. 25 m is the usual
    # "same place" threshold of place-recognition benchmarks (Pitts30k, Tokyo 24/7).
    group_radius_m: float = 25.0
    # Weight of a candidate: exp((score - best score) / temperature). Small temperatures trust
    # the best match; large ones let a crowd of weaker matches outvote it.
    temperature: float = 0.05
    # The radius never goes below this: consumer GPS in the database photos is rarely better.
    min_radius_m: float = 10.0
    # radius = scale · weighted RMS distance of the group around the estimate (then the floor),
    # and a group of one photo gets ``single_radius_m`` since nothing backs it up.
    radius_scale: float = 2.0
    single_radius_m: float = 25.0
    # Mean-shift refinement steps of the group centre.
    max_iterations: int = 10


@dataclass
class ConfidenceConfig:
    """When an estimate is flagged: a weak best match, or candidates that disagree.

    Raw cosine scores mean nothing on their own: their scale depends on the model and, for
    ``lite0-vlad``, on the vocabulary fitted to each database (unrelated photos score 0.2 against
    one Lund database and 0.45 against another). So the bar is taken from the database itself:
    how similar its located photos are to their nearest neighbour. A query whose best match is
    weaker than ``reference_quantile`` of those is probably from a place the database does not
    cover. On ``shared/data/lund`` (odd frames indexed) this flags all 9 Arezzo photos and none
    of the 14 even Lund frames (docs/estimate.md).
    """

    reference_quantile: float = 0.10
    # Fewer located photos than this give no meaningful reference: no weak-match check.
    min_reference_photos: int = 5
    # Database photos searched to measure the reference (evenly spread over the rows).
    reference_sample: int = 200
    # Below this share of the candidates' weight, the winning group is contested.
    min_agreement: float = 0.5


@dataclass
class Estimate:
    lat: float
    lon: float
    radius_m: float
    # How many candidates formed the group, and their share of the candidates' total weight:
    # a low share means the top candidates disagree about the place.
    support: int = 1
    agreement: float = 1.0
    considered: int = 1  # candidates the estimate looked at (not in the JSON)
    # "high", "medium" (the candidates disagree) or "low" (even the best match is weaker than
    # this database's photos are to their own neighbours): see ``assess_confidence``.
    confidence: str = "high"
    warnings: list[str] = field(default_factory=list)  # the reasons, in words (not in "estimate")
    #: The re-ranked top-1's verification ("verified", "unverified", "no match"), None without.
    verification: str | None = None

    def to_json(self) -> dict:
        return {
            "lat": json_number(self.lat, 7),
            "lon": json_number(self.lon, 7),
            "radius_m": json_number(self.radius_m, 1),
            "support": self.support,
            "agreement": json_number(self.agreement, 3),
            "confidence": self.confidence,
            "verification": self.verification,
        }


def estimate_position(
    lats: Sequence[float],
    lons: Sequence[float],
    scores: Sequence[float],
    config: EstimateConfig | None = None,
    anchor: int | None = None,
) -> Estimate | None:
    """Similarity-weighted centre of the strongest spatially consistent group of candidates.

    Every candidate seeds a group (the candidates within ``group_radius_m`` of it); the group
    with the largest total weight wins, its centre is refined by flat-kernel mean shift until
    membership stops changing, and the estimate is the weighted mean of the final members.
    With no agreement at all this falls back to the best-scoring candidate, i.e. top-1.

    ``anchor``: a candidate the winning group must contain, whatever the weights say — the
    re-ranked first candidate, which geometric verification chose over look-alikes whose
    cosine may be higher. Its neighbours still share the average by their cosine, so the
    estimate is as smooth as without re-ranking, around the right place.
    """
    cfg = config or EstimateConfig()
    lats = np.asarray(lats, dtype=np.float64)
    lons = np.asarray(lons, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if not (lats.shape == lons.shape == scores.shape) or lats.ndim != 1:
        raise ValueError("lats, lons and scores must be 1-D arrays of one length")
    if lats.size == 0:
        return None

    best = int(np.argmax(scores))
    lat0, lon0 = float(lats[best]), float(lons[best])
    xy = to_local_m(lats, lons, lat0, lon0)  # metres around the best candidate
    temperature = max(float(cfg.temperature), 1e-6)
    weights = np.exp((scores - scores[best]) / temperature)
    total = float(weights.sum())

    radius = float(cfg.group_radius_m)
    dist = np.linalg.norm(xy[:, None, :] - xy[None, :, :], axis=-1)
    group_weight = (dist <= radius) @ weights
    # Ties go to the group seeded by the better-ranked candidate.
    order = np.lexsort((-scores, -np.round(group_weight, 12)))
    seed = int(order[0]) if anchor is None else int(anchor)

    members = dist[seed] <= radius
    centre = _weighted_mean(xy, weights, members)
    for _ in range(max(int(cfg.max_iterations), 0)):
        new_members = np.linalg.norm(xy - centre, axis=1) <= radius
        if not new_members.any():
            break
        if np.array_equal(new_members, members) or (anchor is not None and not new_members[anchor]):
            break
        new_centre = _weighted_mean(xy, weights, new_members)
        # Mean shift can only be allowed to move to a group at least as strong.
        if weights[new_members].sum() + 1e-12 < weights[members].sum():
            break
        members, centre = new_members, new_centre

    member_w = weights[members]
    d2 = np.sum((xy[members] - centre) ** 2, axis=1)
    spread = math.sqrt(float(np.sum(member_w * d2) / member_w.sum()))
    support = int(members.sum())
    if support == 1:
        radius_m = max(cfg.single_radius_m, cfg.min_radius_m)
    else:
        radius_m = max(cfg.radius_scale * spread, cfg.min_radius_m)
    lat, lon = from_local_m(float(centre[0]), float(centre[1]), lat0, lon0)
    return Estimate(
        lat=lat,
        lon=lon,
        radius_m=float(radius_m),
        support=support,
        agreement=float(member_w.sum() / total) if total > 0 else 1.0,
        considered=int(lats.size),
    )


def assess_confidence(
    estimate: Estimate,
    best_score: float,
    reference: float | None,
    config: ConfidenceConfig | None = None,
    verification: str | None = None,
    top_inliers: int | None = None,
) -> Estimate:
    """Set ``estimate.confidence`` and ``estimate.warnings``; returns the same estimate.

    With geometric verification (``verification``: the re-ranked top-1's verdict, see
    :mod:`geoloc.verify`): ``low`` when no candidate shares the query's layout ("no match"),
    at most ``medium`` when the best one only partly does. Verification is the stronger
    evidence, so a verified match is not second-guessed by raw scores. Without it: ``low`` when
    the best score is below ``reference`` (the database's typical nearest-neighbour score).
    Either way, ``medium`` when the winning group holds less than ``min_agreement`` of the
    candidates' weight, i.e. the top candidates point to different places.
    """
    cfg = config or ConfidenceConfig()
    warnings: list[str] = []
    level = "high"
    estimate.verification = verification
    if verification == "no match":
        level = "low"
        warnings.append(
            f"no match: even the best candidate shares only {top_inliers} geometrically consistent "
            "features with the photo; it is probably from a place the database does not cover"
        )
    elif verification == "unverified":
        level = "medium"
        warnings.append(
            f"unverified: the best candidate shares only {top_inliers} geometrically consistent "
            "features with the photo"
        )
    elif verification is None and reference is not None and best_score < reference:
        level = "low"
        warnings.append(
            f"weak match: best score {best_score:.3f} is below {reference:.3f}, what this "
            "database's own photos typically score against their nearest neighbour; the photo "
            "may be from a place the database does not cover"
        )
    if estimate.agreement < cfg.min_agreement and estimate.considered > 1:
        level = "low" if level == "low" else "medium"
        warnings.append(
            f"candidates disagree: the estimate's group of {estimate.support} holds "
            f"{estimate.agreement:.0%} of the candidates' weight; the others point elsewhere"
        )
    estimate.confidence = level
    estimate.warnings = warnings
    return estimate


def _weighted_mean(xy: np.ndarray, weights: np.ndarray, members: np.ndarray) -> np.ndarray:
    w = weights[members]
    return (xy[members] * w[:, None]).sum(axis=0) / w.sum()
