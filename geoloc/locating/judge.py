"""One query's answer from its search results: re-ranked, reordered, estimated, judged.

``geoloc locate`` answers and ``geoloc eval`` scores through :func:`rank_and_judge`, and both
take the query's verification cells from :func:`query_cells`: written once, so that the
figures eval reports are those of what locate does, with the same estimate and confidence
settings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from geoloc.retrieval import verify
from geoloc.locating.estimate import ConfidenceConfig, Estimate, EstimateConfig, judge
from geoloc.retrieval.rerank import VERIFIERS, Evidence, Reranked, Reranker


@dataclass
class Judged:
    """One query's candidates in their final order, and the estimate they gave."""

    rows: list[int]  # search rows, best first
    scores: list[float]  # their global (cosine) scores, in that order
    inliers: list[int | None]  # per row: consistent matches, None where it was not verified
    verifiers: list[str | None]  # per row: the verifier of those matches (None: not verified)
    fused: list[float | None]  # per row: the re-ranking score, None where it was not verified
    estimate: Estimate | None
    verdict: Reranked | None = None  # None: the query was not verified
    notes: list[str] = field(default_factory=list)  # what re-ranking could not do
    rerank_s: float = 0.0


def query_cells(reranker: Reranker, paths: Sequence[Path], *, maps=None, slots=None,
                stride: float = 0.0) -> list:
    """The queries' verification evidence, for the re-ranker's verifier: SIFT or learned
    keypoints read from the photo files whatever else is at hand; else dense cells from ``maps``
    (the network's maps of this very pass, at ``stride``) or ``slots`` (stored maps, as the
    database's ``maps.i8`` decodes them; None where a query has none), and for a cascade the
    learned keypoints beside them (:class:`~geoloc.retrieval.rerank.Evidence`). None for every
    query without either."""
    spec = reranker.spec
    paths = [Path(p) for p in paths]
    if spec.name == "sift":
        return reranker.sift_cells(paths)
    if not spec.dense:
        return reranker.query_learned(paths)
    if maps is not None:
        dense = [verify.query_cells(np.asarray(m), stride) for m in maps]
    elif slots is not None:
        dense = [None if s is None else verify.dequantize(*s, stride) for s in slots]
    else:
        return [None] * len(paths)
    if not spec.learned:
        return dense
    learned = reranker.query_learned(paths)
    return [None if d is None else Evidence(d, k) for d, k in zip(dense, learned)]


def rank_and_judge(
    rows: Sequence[int],
    scores: Sequence[float],
    lats: np.ndarray,
    lons: np.ndarray,
    *,
    cells: verify.Cells | Evidence | None = None,
    reranker: Reranker | None = None,
    reference: Callable[[], float | None] = lambda: None,
    estimate_k: int = 10,
    estimate_config: EstimateConfig | None = None,
    confidence_config: ConfidenceConfig | None = None,
) -> Judged:
    """The candidates ``rows`` (search rows, best first, with their ``scores``) re-ranked by
    ``reranker`` when the query has ``cells``, then the estimate from the first ``estimate_k``
    and its confidence. ``lats``/``lons`` are every search row's position.

    Verified, the group must hold the re-ranked first candidate and the verdict decides the
    confidence; unverified, the cosines do, against ``reference()`` (the database's weak-match
    bar, asked only then: measuring it costs searches).
    """
    rows = [int(r) for r in rows]
    scores = [float(s) for s in scores]
    inliers: list[int | None] = [None] * len(rows)
    verifiers: list[str | None] = [None] * len(rows)
    fused: list[float | None] = [None] * len(rows)
    verdict, notes, spent = None, [], 0.0
    if reranker is not None and cells is not None and rows:
        start = time.perf_counter()
        verdict = reranker.rerank(cells, rows, scores)
        n = len(verdict.order)
        order = verdict.order + list(range(n, len(rows)))
        inliers = [verdict.inliers[i] if i < n else None for i in order]
        verifiers = [verdict.verifiers[i] if i < n else None for i in order]
        fused = [verdict.fused[i] if i < n and verdict.inliers[i] is not None else None for i in order]
        rows, scores = [rows[i] for i in order], [scores[i] for i in order]
        notes = list(verdict.notes)
        spent = time.perf_counter() - start
    estimate = None
    if rows:
        best = np.asarray(rows[: max(1, min(estimate_k, len(rows)))], dtype=np.int64)
        estimate = judge(lats[best], lons[best], np.asarray(scores[: len(best)], dtype=np.float64),
                         anchor=0 if verdict else None, reference=None if verdict else reference(),
                         verification=verdict.flag if verdict else None,
                         top_inliers=verdict.top_inliers if verdict else None,
                         inliers=inliers[: len(best)] if verdict else None,
                         bars=verified_bars(verifiers[: len(best)], verdict.side) if verdict else None,
                         estimate_config=estimate_config, confidence_config=confidence_config)
    return Judged(rows, scores, inliers, verifiers, fused, estimate, verdict, notes, spent)


def verified_bars(verifiers: Sequence[str | None], side: int | None = None) -> list[int | None]:
    """Each candidate's "verified" bar, in its own verifier's inlier counts (a cascade's
    candidates carry the learned stage's name or dense's), for a query of ``side`` px: what
    the confidence weighs them by."""
    return [VERIFIERS[v].bars(side)[0] if v in VERIFIERS else None for v in verifiers]
