"""The bar a query's best match must clear to be more than a look-alike, from the database.

Without geometric verification, a cosine score is all that says whether a query's best match
is its place or merely the most similar photo of somewhere else, and what a score is worth
depends on the model and on the vocabulary fitted to each database. So the database is asked:
a sample of its located photos is searched against the others, and each one's best match
10–25 m from it is another viewpoint of the same place. A genuine query should match its place
about as well as the database's photos typically match theirs (the median: the bar). The
nearest metres are left out, where a densely sampled walk holds near duplicates that no query
matches as well. As a sanity check, the same photos' best matches farther than 50 m (other
places) must score lower, else the model tells no places apart here and there is no bar; a
database without enough such pairs (one short street) has no bar either, since nothing then
shows that the bar separates anything.

Measured on the lund walk with ``lite0-vlad`` (docs/estimate.md): bar 0.24, other places 0.12;
the 14 genuine queries score 0.29–0.52, the 9 Arezzo photos and the ImageNet cat 0.17–0.22. A
database with no photos 10–25 m apart (one landmark, photos kilometres apart) has no bar.
"""

from __future__ import annotations

import math

import numpy as np

from geoloc.locating.estimate import ConfidenceConfig
from geoloc.geo import haversine_m


def score_reference(
    index, matrix: np.ndarray, lats: np.ndarray, lons: np.ndarray, config: ConfidenceConfig | None = None,
) -> float | None:
    """The weak-match bar (see the module's docstring), or None when the database has none.

    ``index`` searches the rows of ``matrix`` (``search(queries, k)`` returning faiss-style
    scores and ids, best first); ``lats``/``lons`` are the rows' positions.
    """
    cfg = config or ConfidenceConfig()
    n = len(matrix)
    if n < max(2, cfg.min_reference_photos):
        return None
    # A very large exact database: fewer sampled photos, so that this costs about a few queries.
    budget = max(20, int(4e9 // max(1, n * matrix.shape[1])))
    sample = min(n, cfg.reference_sample, budget)
    rows = np.unique(np.linspace(0, n - 1, sample).round().astype(np.int64))
    scores, ids = index.search(np.ascontiguousarray(matrix[rows], dtype=np.float32), min(n, cfg.reference_depth))
    same, other = [], []
    lo, hi = cfg.same_place_m
    for i, row in enumerate(rows):
        valid = (ids[i] >= 0) & (ids[i] != row)
        js, ss = ids[i][valid], scores[i][valid]
        if not js.size:
            continue
        d = np.atleast_1d(haversine_m(lats[row], lons[row], lats[js], lons[js]))
        near = (d >= lo) & (d <= hi)
        far = d > cfg.far_m
        if near.any():
            same.append(float(ss[np.argmax(near)]))
        if far.any():
            other.append(float(ss[np.argmax(far)]))
    same = [v for v in same if math.isfinite(v)]
    other = [v for v in other if math.isfinite(v)]
    if len(same) < cfg.min_reference_photos or len(other) < cfg.min_reference_photos:
        # Without other places in reach the bar is untested: a one-street database of a few
        # photos set one that a cat cleared (0.225 against 0.22), and every answer was high.
        return None
    bar = float(np.quantile(same, cfg.reference_quantile))
    if float(np.median(other)) >= bar:
        return None  # photos of one place look no more alike than photos of two: no bar
    return bar
