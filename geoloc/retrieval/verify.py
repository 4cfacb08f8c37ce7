"""Geometric verification: does the query's layout map onto a candidate's by one geometry?

The global descriptor is an orderless bag of local features, so two streets with the same kind
of cobbles and façades can score alike, and nothing in a cosine says whether the *layout*
agrees. Verification asks what the global descriptor cannot: the network's own stride-16 map
(VGG-16's conv5_3, EfficientNet-Lite0's block 10) gives one local descriptor per cell; cells of
the query and of a candidate are paired by mutual nearest neighbours, and MAGSAC++ counts the
pairs consistent with one fundamental matrix (a street is a 3-D scene, not a plane). A true pair
keeps a large consistent set under viewpoint, scale and lighting change; a look-alike keeps the
few chance matches.

The count is used twice (figures and their commands: docs/benchmarks.md, re-ranking):

* re-ranking: ``cosine + 12 · inliers / query cells`` over the top global candidates, so
  verification decides between a look-alike and the right place while the cosine still orders
  candidates that verify alike;
* confidence: a homography fitted to the re-ranked top-1's matches (its chance count is far
  lower) tells "verified" (≥ 40 inliers) from "no match" (< 15) in absolute terms.

Maps are stored with each descriptor at index time, quantised to int8 with one float16 scale
per cell (measured no loss against float16); maps of more than 128 channels are first projected
to 128 by a fixed random rotation, so that a VGG-16 database stays near 200 KiB a photo.

A classical alternative, ``RerankConfig.verifier = "sift"`` (:func:`sift_cells`), verifies with
OpenCV SIFT keypoints taken from the photo files instead. Measured on the same dev sets
(docs/benchmarks.md, "the verifiers"), it is better on a viewpoint shift and on blur but finds no
consistent keypoints at night, is slower (keypoints from the files) and lower over all sets, so
the dense verifier stays the default.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from geoloc.database.maps import MAX_CHANNELS

#: Fusion weight: ``cosine + W · inliers / query cells`` (+0.01 per inlier at 1200 cells, 640 px).
#: Chosen on the dev sets at 640 px and again, identically, at 480 px; 12–1000 rank alike there,
#: and the smallest keeps the cosine deciding between candidates that verify alike.
WEIGHT = 12.0
#: Homography inliers of the re-ranked top-1: at least this many → "verified"...
VERIFIED_MIN = 40
#: ...fewer than this → "no match" (out-of-coverage queries reached at most 12 on the dev sets).
NO_MATCH_MAX = 15
_PROJECTION_SEED = 20161  # fixed forever: stored maps of a database depend on it
#: The SIFT verifier: keypoints per image, Lowe's ratio, and the fusion weight per inlier share
#: (64: the weight the re-ranking experiments chose for SIFT at 640 px).
SIFT_FEATURES = 2000
SIFT_RATIO = 0.8
SIFT_WEIGHT = 64.0
#: SIFT keypoints are located to about a pixel, not to a 16-px cell: the geometric thresholds
#: (half a "stride" for the fundamental matrix, one for the homography) become 2 and 4 px.
SIFT_STRIDE = 4.0


@dataclass
class Cells:
    """One image's local descriptors for matching: N unit vectors (N×C) and where they are."""

    desc: np.ndarray  # N×C float32, L2-normalised
    xy: np.ndarray  # N×2 float32, cell centres in pixels of the network's input
    stride: float
    #: The image's (width, height) in pixels, for matchers that normalise positions by it
    #: (LightGlue); None for dense cells and SIFT.
    size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.desc)


@dataclass
class Verdict:
    """What verifying one query against its candidates found."""

    order: list[int]  # indexes into the candidates, best first after fusion
    inliers: np.ndarray  # fundamental-matrix inliers per candidate (-1: not verified)
    fused: np.ndarray  # the re-ranking score per candidate
    top_inliers: int  # homography inliers of the new top-1 (for the flag)

    @property
    def flag(self) -> str:
        """'verified', 'unverified' or 'no match', from the top-1's homography inliers."""
        return flag(self.top_inliers)


def flag(homography_inliers: int, verified_min: int = VERIFIED_MIN, no_match_max: int = NO_MATCH_MAX) -> str:
    if homography_inliers >= verified_min:
        return "verified"
    if homography_inliers < no_match_max:
        return "no match"
    return "unverified"


# ---------------------------------------------------------------------------------------------
# Maps: from the network, to storage and back


@functools.lru_cache(maxsize=8)
def projection(channels: int) -> np.ndarray | None:
    """The fixed C×128 rotation for maps wider than ``MAX_CHANNELS`` (None: kept as they are).

    Random rotations preserve cosines approximately (Johnson–Lindenstrauss), which is all that
    mutual-nearest-neighbour matching needs; unlike PCA there is nothing to fit or store.
    Computed once per width (a QR decomposition: 7 ms, most of storing a VGG-16 map) and
    shared read-only.
    """
    if channels <= MAX_CHANNELS:
        return None
    rng = np.random.default_rng(_PROJECTION_SEED + channels)
    q, _ = np.linalg.qr(rng.standard_normal((channels, MAX_CHANNELS)))
    q = q.astype(np.float32)
    q.setflags(write=False)
    return q


def cells_of(fmap: np.ndarray, stride: float, proj: np.ndarray | None = None) -> Cells:
    """A C×h×w map as unit cell descriptors, projected when ``proj`` is given."""
    c, h, w = fmap.shape
    desc = fmap.reshape(c, h * w).T.astype(np.float32)
    if proj is not None:
        desc = desc @ proj
    norms = np.linalg.norm(desc, axis=1, keepdims=True)
    desc = desc / np.maximum(norms, 1e-12)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    xy = (np.stack([cols.ravel(), rows.ravel()], axis=1) + 0.5) * float(stride)
    return Cells(np.ascontiguousarray(desc), xy.astype(np.float32), float(stride))


def stored_map(fmap: np.ndarray, stride: float) -> tuple[np.ndarray, np.ndarray, int, int]:
    """A network's C×h×w map as a database stores it: ``(int8 N×C', float16 scales, h, w)``."""
    c, h, w = fmap.shape
    q, scales = quantize(cells_of(fmap, stride, projection(c)))
    return q, scales, h, w


def query_cells(fmap: np.ndarray, stride: float) -> Cells:
    """A query's map, as comparable with stored maps: projected like them, then rounded to
    int8 like them (so that a database photo queried again matches itself exactly)."""
    q, scales, h, w = stored_map(fmap, stride)
    return dequantize(q, scales, h, w, stride)


def quantize(cells: Cells) -> tuple[np.ndarray, np.ndarray]:
    """int8 descriptors (N×C) and one float16 scale per cell: what a database stores."""
    scale = np.abs(cells.desc).max(axis=1, keepdims=True).clip(1e-8) / 127.0
    q = np.clip(np.round(cells.desc / scale), -127, 127).astype(np.int8)
    return q, scale.astype(np.float16).ravel()


def dequantize(q: np.ndarray, scales: np.ndarray, h: int, w: int, stride: float) -> Cells:
    desc = q.astype(np.float32) * scales.astype(np.float32)[:, None]
    desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    xy = (np.stack([cols.ravel(), rows.ravel()], axis=1) + 0.5) * float(stride)
    return Cells(np.ascontiguousarray(desc), xy.astype(np.float32), float(stride))


# ---------------------------------------------------------------------------------------------
# Matching and geometry


def mutual_nearest(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest neighbours of two sets of unit vectors.

    Mutuality is the cheap filter that makes dense matching work: every query cell has a nearest
    neighbour, but on repeated texture (sky, cobbles) it is arbitrary and rarely mutual.
    """
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    sim = a @ b.T
    forward = sim.argmax(axis=1)
    backward = sim.argmax(axis=0)
    ia = np.nonzero(backward[forward] == np.arange(len(a)))[0]
    return ia, forward[ia]


def ratio_nearest(a: np.ndarray, b: np.ndarray, ratio: float = SIFT_RATIO) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest neighbours that also pass Lowe's ratio test (nearest distance below
    ``ratio`` × the second nearest): keypoint descriptors are distinctive enough for the test
    to remove ambiguous matches, which dense cells are not."""
    if len(a) < 2 or len(b) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ia, ib = mutual_nearest(a, b)
    if not len(ia):
        return ia, ib
    sim = a[ia] @ b.T
    top2 = -np.partition(-sim, 1, axis=1)[:, :2]
    d2 = np.clip(2.0 - 2.0 * top2, 0.0, None)  # unit vectors: squared distances
    keep = d2[:, 0] < ratio * ratio * d2[:, 1]
    return ia[keep], ib[keep]


def sift_cells(path, max_side: int) -> Cells | None:
    """A photo's SIFT keypoints as Cells (RootSIFT descriptors, pixel positions), at the
    database's image size; None when the file cannot be decoded.

    RootSIFT (L1-normalise, square root) makes the dot product a Hellinger kernel, the usual
    free gain over raw SIFT for matching.
    """
    import cv2

    from geoloc.errors import PhotoError
    from geoloc.photos import load_image

    try:
        image = load_image(path, max_side)
    except PhotoError:
        return None
    grey = np.asarray(image.convert("L"))
    keypoints, desc = cv2.SIFT_create(nfeatures=SIFT_FEATURES).detectAndCompute(grey, None)
    if desc is None or not keypoints:
        return Cells(np.zeros((0, 128), np.float32), np.zeros((0, 2), np.float32), SIFT_STRIDE)
    desc = desc.astype(np.float32)
    desc = np.sqrt(desc / (desc.sum(axis=1, keepdims=True) + 1e-7))
    desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
    xy = np.array([k.pt for k in keypoints], dtype=np.float32)
    return Cells(np.ascontiguousarray(desc), xy, SIFT_STRIDE)


def inliers(pa: np.ndarray, pb: np.ndarray, model: str, threshold: float) -> np.ndarray:
    """Boolean inlier mask of MAGSAC++ fitting ``model`` ("fundamental" or "homography")."""
    import cv2

    n = len(pa)
    if n < (8 if model == "fundamental" else 4):
        return np.zeros(n, dtype=bool)
    a = np.ascontiguousarray(pa, dtype=np.float32).reshape(-1, 1, 2)
    b = np.ascontiguousarray(pb, dtype=np.float32).reshape(-1, 1, 2)
    try:
        if model == "fundamental":
            _, mask = cv2.findFundamentalMat(a, b, cv2.USAC_MAGSAC, threshold, 0.999, 2000)
        else:
            _, mask = cv2.findHomography(a, b, cv2.USAC_MAGSAC, threshold, maxIters=2000, confidence=0.999)
    except cv2.error:
        return np.zeros(n, dtype=bool)
    if mask is None or mask.size != n:
        return np.zeros(n, dtype=bool)
    return mask.ravel().astype(bool)


def verify(query: Cells, candidates: list[Cells | None], cosines: np.ndarray, weight: float = WEIGHT,
           ratio: float | None = None, match=None) -> Verdict:
    """Re-rank ``candidates`` (None: nothing to verify with; it keeps its cosine alone).

    Each candidate: mutual nearest cells, MAGSAC++ fundamental matrix at half a cell. Then
    ``fused = cosine + weight · inliers / query cells``, and one homography at one cell on the
    new top-1's matches for the flag. ``ratio``: keep only matches that pass Lowe's ratio
    test too (SIFT keypoints). ``match(query, candidate) → (ia, ib)``: a learned matcher
    instead of nearest neighbours (:mod:`geoloc.retrieval.learned`).
    """
    n = len(candidates)
    counts = np.full(n, -1, dtype=np.int64)
    matches: list[tuple[np.ndarray, np.ndarray] | None] = [None] * n
    for i, cand in enumerate(candidates):
        if cand is None:
            continue
        if match is not None:
            ia, ib = match(query, cand)
        elif ratio is None:
            ia, ib = mutual_nearest(query.desc, cand.desc)
        else:
            ia, ib = ratio_nearest(query.desc, cand.desc, ratio)
        matches[i] = (ia, ib)
        counts[i] = int(inliers(query.xy[ia], cand.xy[ib], "fundamental", query.stride / 2).sum())
    fused = np.asarray(cosines, dtype=np.float64) + weight * np.maximum(counts, 0) / max(len(query), 1)
    order = [int(i) for i in np.argsort(-fused, kind="stable")]
    top = 0
    if order and matches[order[0]] is not None:
        ia, ib = matches[order[0]]
        cand = candidates[order[0]]
        top = int(inliers(query.xy[ia], cand.xy[ib], "homography", query.stride).sum())
    return Verdict(order, counts, fused, top)
