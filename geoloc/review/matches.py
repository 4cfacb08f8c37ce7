"""The matched points between a photo and a verified candidate, for the page to draw.

The located answer keeps only how many matches verified a candidate, not where they are (the
re-ranking's cells and keypoints are thrown away once counted). When the user opens a verified
candidate, its matches are found again here with the verifier's public pieces (SIFT keypoints,
mutual nearest neighbours passing the ratio test, the MAGSAC++ fundamental matrix): the same
kind of evidence, drawn, without changing how re-ranking works.
"""

from __future__ import annotations

import threading
from pathlib import Path

#: OpenCV's own thread pool deadlocks when SIFT and MAGSAC run from several of the server's
#: request threads at once (seen: every request thread waiting in cv2): one pair at a time.
_OPENCV = threading.Lock()

#: The image size matches are looked for at, and the most lines drawn.
SIDE = 640
MAX_LINES = 150


def _size(path: Path, side: int) -> tuple[int, int] | None:
    from geoloc.errors import PhotoError
    from geoloc.photos import load_image

    try:
        return load_image(path, side).size
    except PhotoError:
        return None


def matched_points(query: Path, candidate: Path, side: int = SIDE) -> dict:
    """``{"pairs": [[qx, qy, cx, cy], …]}`` in fractions of each photo's width and height
    (inliers of the fundamental matrix, at most :data:`MAX_LINES`), and ``"found"``, how many
    there were; no pairs when either photo cannot be read."""
    from geoloc.retrieval import verify

    sizes = [_size(Path(p), side) for p in (query, candidate)]
    if None in sizes:
        return {"pairs": [], "found": 0}
    import cv2

    with _OPENCV:
        cv2.setNumThreads(0)  # sequential: the request threads share no pool
        a = verify.sift_cells(Path(query), side)
        b = verify.sift_cells(Path(candidate), side)
        if a is None or b is None:
            return {"pairs": [], "found": 0}
        ia, ib = _ratio_matches(a.desc, b.desc, verify.SIFT_RATIO)
        keep = verify.inliers(a.xy[ia], b.xy[ib], "fundamental", a.stride / 2)
    qa, cb = a.xy[ia][keep], b.xy[ib][keep]
    (qw, qh), (cw, ch) = sizes
    step = max(1, len(qa) // MAX_LINES)
    pairs = [[round(float(q[0]) / qw, 4), round(float(q[1]) / qh, 4), round(float(c[0]) / cw, 4),
              round(float(c[1]) / ch, 4)] for q, c in zip(qa[::step], cb[::step])]
    return {"pairs": pairs[:MAX_LINES], "found": int(keep.sum())}


def _ratio_matches(a, b, ratio: float):
    """Mutual nearest neighbours passing Lowe's ratio test, as the verifier's ``ratio_nearest``,
    by OpenCV's brute-force matcher rather than a numpy product: numpy's BLAS thread pool was
    seen to hang when called from a request thread, OpenCV run sequentially does not."""
    import cv2
    import numpy as np

    if len(a) < 2 or len(b) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    back = {m.queryIdx: m.trainIdx for m in matcher.match(b, a)}
    ia, ib = [], []
    for pair in matcher.knnMatch(a, b, k=2):
        if len(pair) == 2 and pair[0].distance < ratio * pair[1].distance and back.get(pair[0].trainIdx) == pair[0].queryIdx:
            ia.append(pair[0].queryIdx)
            ib.append(pair[0].trainIdx)
    return np.asarray(ia, np.int64), np.asarray(ib, np.int64)
