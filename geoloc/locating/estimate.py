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


#: Confidence levels, weakest first: ``--min-confidence X`` keeps X and those after it.
CONFIDENCE_LEVELS = ("low", "medium", "high")


def meets(confidence: str | None, minimum: str) -> bool:
    """Whether an estimate of ``confidence`` passes ``--min-confidence minimum``."""
    if minimum not in CONFIDENCE_LEVELS:
        raise ValueError(f"unknown confidence level {minimum!r}; choose one of {', '.join(CONFIDENCE_LEVELS)}")
    return confidence in CONFIDENCE_LEVELS and CONFIDENCE_LEVELS.index(confidence) >= CONFIDENCE_LEVELS.index(minimum)


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
    """When an estimate is flagged, and how wide its radius is then (docs/estimate.md).

    With geometric verification (the default) the re-ranked first candidate's verdict decides.
    Without it (``--no-rerank``) only cosine scores are left, and the bar they must clear comes
    from the database itself (:mod:`geoloc.locating.coverage`): between what its photos score against
    another viewpoint of their own place and against other places. It is not taken from a
    photo's nearest neighbour: in a densely sampled walk those are near duplicates, and every
    genuine query fell below. Without verification and without a bar, an estimate is at most
    ``medium``: nothing then tells a look-alike from the place.
    """

    #: The bar: this quantile of the database photos' best same-place scores.
    reference_quantile: float = 0.5
    #: A best match this far from a photo is the same place seen from elsewhere (metres).
    same_place_m: tuple[float, float] = (10.0, 25.0)
    #: Farther than this from a photo is another place (twice the estimate's grouping radius).
    far_m: float = 50.0
    #: Neighbours searched per sampled photo for both levels.
    reference_depth: int = 256
    #: Fewer sampled photos with another place in reach: no meaningful bar, no weak-match check.
    min_reference_photos: int = 5
    #: Database photos searched to measure the bar (evenly spread over the rows).
    reference_sample: int = 200
    #: Below this share of the candidates' weight, the winning group is contested.
    min_agreement: float = 0.5
    #: With a verified top-1, what it adds to its cosine weight in that share, per multiple of
    #: its verifier's "verified" bar (0: cosines alone, the rule before; from 2 up every verified
    #: top-1 of the dev sets clears the agreement bar, and 92–98 % of `high` stay right). A night photo's
    #: cosines are flat and scattered while its top-1 holds 50–90 XFeat inliers: geometry is
    #: the stronger evidence, and look-alikes that only look alike should not outvote it
    #: (docs/estimate.md, "Calibration per verifier").
    verified_weight: float = 2.0
    #: Without verification, a place fewer candidates than this point to is at most ``medium``:
    #: one look-alike photo, however similar, is not two photos of one place agreeing.
    min_support_unverified: int = 2
    #: A query that matches nothing gets a radius of at least this, and at least the distance
    #: to its farthest candidate: the photo may be anywhere, and the radius must not say 25 m.
    no_match_radius_m: float = 1000.0


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
    # "high", "medium" (partly verified, or the candidates disagree) or "low" (nothing in the
    # database matches): see ``assess_confidence``.
    confidence: str = "high"
    warnings: list[str] = field(default_factory=list)  # the reasons, in words (not in "estimate")
    #: The re-ranked top-1's verification ("verified", "unverified", "no match"), None without.
    verification: str | None = None
    #: The re-ranked top-1's homography inliers behind ``verification`` (not in the JSON: the
    #: candidates' ``verified`` carry the counts; benchmarks calibrate the flag on it).
    top_inliers: int | None = None
    #: The farthest considered candidate's distance from the estimate (not in the JSON).
    extent_m: float = 0.0
    #: The considered candidates' weights and which of them formed the group (not in the JSON:
    #: the confidence weighs the group again with verification, ``assess_confidence``).
    weights: np.ndarray | None = field(default=None, repr=False)
    members: np.ndarray | None = field(default=None, repr=False)
    #: The group's share once verification is weighed in (None: not weighed; not in the JSON).
    verified_agreement: float | None = None
    #: What the estimate rests on: any of "visual", "time", "track", "sequence" (geoloc.trips).
    evidence: list[str] = field(default_factory=lambda: ["visual"])
    #: Seconds between the photo and the nearest fix of known time it was placed by; None
    #: when time played no part.
    time_gap_s: float | None = None

    def to_json(self) -> dict:
        return {
            "lat": json_number(self.lat, 7),
            "lon": json_number(self.lon, 7),
            "radius_m": json_number(self.radius_m, 1),
            "support": self.support,
            "agreement": json_number(self.agreement, 3),
            "confidence": self.confidence,
            "verification": self.verification,
            "evidence": list(self.evidence),
            "time_gap_s": json_number(self.time_gap_s, 1),
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
        extent_m=float(np.linalg.norm(xy - centre, axis=1).max()),
        weights=weights,
        members=members,
    )


def verified_share(estimate: Estimate, inliers: int | None, bar: int | None, verified_weight: float) -> float | None:
    """The group's share of the candidates' weight when the anchor (the re-ranked first
    candidate, always in the group) adds ``verified_weight`` per multiple of its verifier's
    "verified" ``bar`` to its cosine weight: at the bar it counts as much as two of the most
    similar photos (``verified_weight`` 2), at twice the bar as four. None when the estimate
    keeps no weights or the anchor is not verified.

    Why: the cosine weights alone say where most *similar-looking* photos are. At night they are
    flat and scattered (2–13 % for the right group), while the top-1 holds 50–90 consistent
    XFeat matches: a photo of the place, not a look-alike. Only the anchor is weighed: the other
    verified candidates are mostly the same street 30–60 m on (they see the same façades), and
    weighing them against the group took `high` answers on the Lund walk from 14 to 9 (dense).
    """
    w, members = estimate.weights, estimate.members
    if w is None or members is None or not bar or inliers is None or inliers < bar or not members[0]:
        return None
    v = w.copy()
    v[0] += float(verified_weight) * inliers / bar
    return float(v[members].sum() / v.sum())


def assess_confidence(
    estimate: Estimate,
    best_score: float,
    reference: float | None,
    config: ConfidenceConfig | None = None,
    verification: str | None = None,
    top_inliers: int | None = None,
    inliers: Sequence[int | None] | None = None,
    bars: Sequence[int | None] | None = None,
) -> Estimate:
    """Set ``estimate.confidence`` and ``estimate.warnings``; returns the same estimate.

    With geometric verification (``verification``: the re-ranked top-1's verdict, see
    :mod:`geoloc.retrieval.verify`): ``low`` when no candidate shares the query's layout ("no match"),
    at most ``medium`` when the best one only partly does. Verification is the stronger
    evidence, so a verified match is not second-guessed by raw scores. Without it: ``low`` when
    the best score is below ``reference`` (:mod:`geoloc.locating.coverage`), at most ``medium`` when
    there is no reference, and at most ``medium`` when a single candidate is all that points to
    the place (``min_support_unverified``). Either way, ``medium`` when the winning group holds less than
    ``min_agreement`` of the candidates' weight, i.e. the top candidates point to different
    places; with a verified top-1 and the candidates' ``inliers`` (and each one's verifier's
    "verified" ``bars``), the top-1's weight counts its verification too (:func:`verified_share`),
    so a strongly verified top-1 is not held at ``medium`` by scattered look-alikes.

    A query that matched nothing (no match, weak match) keeps its estimate, so that the JSON
    stays one object per query, but its radius grows to ``no_match_radius_m`` or the farthest
    candidate: the candidates' agreement means nothing when none of them is the place.
    """
    cfg = config or ConfidenceConfig()
    warnings: list[str] = []
    level = "high"
    unmatched = False
    estimate.verification = verification
    estimate.top_inliers = top_inliers
    if verification == "no match":
        level, unmatched = "low", True
        # Not "the place is missing": a night photo of a place the database holds by day ends
        # here too (Tokyo 24/7), and its top candidate may well be the right one, unconfirmed.
        warnings.append(
            f"no match: even the best candidate shares only {top_inliers} features with the photo "
            "in one consistent layout, too few to confirm it: the database may have no photo of "
            "this place, or none taken close enough in viewpoint, light or season"
        )
    elif verification == "unverified":
        level = "medium"
        warnings.append(
            f"unverified: the best candidate shares only {top_inliers} geometrically consistent "
            "features with the photo"
        )
    elif verification is None and reference is None:
        level = "medium"
        warnings.append(
            "unverified: without re-ranking, nothing tells the place from a look-alike in this "
            "database (it has too few photos of one place seen from 10–25 m apart to set a bar)"
        )
    elif verification is None and best_score < reference:
        level, unmatched = "low", True
        best, bar = _distinct(best_score, reference)
        warnings.append(
            f"weak match: best score {best} is below {bar}, the bar between what this database's "
            "photos score against their own place and against other places; the database may "
            "have no photo of this place, or none that looks enough like this one"
        )
    if (verification is None and level == "high" and estimate.considered > 1
            and estimate.support < cfg.min_support_unverified):
        level = "medium"
        warnings.append(
            "unconfirmed: only the best candidate points to this place, and without re-ranking "
            "nothing tells it from a look-alike"
        )
    agreement = estimate.agreement
    if verification == "verified" and inliers is not None and bars is not None and cfg.verified_weight > 0:
        estimate.verified_agreement = verified_share(estimate, inliers[0] if len(inliers) else None,
                                                     bars[0] if len(bars) else None, cfg.verified_weight)
        if estimate.verified_agreement is not None:
            agreement = estimate.verified_agreement
    if agreement < cfg.min_agreement and estimate.considered > 1:
        level = "low" if level == "low" else "medium"
        weighed = " (verification weighed in)" if estimate.verified_agreement is not None else ""
        warnings.append(
            f"candidates disagree: the estimate's group of {estimate.support} holds "
            f"{agreement:.0%} of the candidates' weight{weighed}; the others point elsewhere"
        )
    if unmatched:
        estimate.radius_m = max(estimate.radius_m, estimate.extent_m, cfg.no_match_radius_m)
    estimate.confidence = level
    estimate.warnings = warnings
    return estimate


def judge(
    lats: Sequence[float],
    lons: Sequence[float],
    scores: Sequence[float],
    *,
    anchor: int | None = None,
    reference: float | None = None,
    verification: str | None = None,
    top_inliers: int | None = None,
    inliers: Sequence[int | None] | None = None,
    bars: Sequence[int | None] | None = None,
    estimate_config: EstimateConfig | None = None,
    confidence_config: ConfidenceConfig | None = None,
) -> Estimate | None:
    """The estimate and its confidence from ranked candidates (best first): what ``locate``
    answers and ``eval`` scores, computed by one function so that they cannot drift apart.
    ``inliers``/``bars``: per candidate, its verification and its verifier's "verified" bar."""
    estimate = estimate_position(lats, lons, scores, estimate_config, anchor=anchor)
    if estimate is None:
        return None
    return assess_confidence(estimate, float(np.asarray(scores)[0]), reference, confidence_config,
                             verification=verification, top_inliers=top_inliers, inliers=inliers, bars=bars)


def _distinct(value: float, bar: float) -> tuple[str, str]:
    """Two scores printed with enough digits to differ ("0.425 is below 0.425" said nothing)."""
    for digits in (3, 4, 5, 6):
        a, b = f"{value:.{digits}f}", f"{bar:.{digits}f}"
        if a != b:
            return a, b
    return a, b


def _weighted_mean(xy: np.ndarray, weights: np.ndarray, members: np.ndarray) -> np.ndarray:
    w = weights[members]
    return (xy[members] * w[:, None]).sum(axis=0) / w.sum()
