"""Training tuples and the validation split, from GPS positions alone.

The paper's weak supervision: a photo within ``pos_radius_m`` (10 m) of the query *may* show
the same place (it could face the other way, so it is only a potential positive; the network
picks the best-matching one), and a photo beyond ``neg_radius_m`` (25 m) certainly does not.
Photos in between are never used as negatives, because GPS noise makes them ambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geoloc.errors import GeolocError


class TrainingDataError(GeolocError):
    """The photos cannot supervise training (too few, or no nearby pairs)."""


@dataclass
class TupleIndex:
    """Which photos may serve as query, positive and negative, by index into one photo set.

    ``positives[k]`` and ``non_negatives[k]`` belong to ``queries[k]``; ``non_negatives``
    includes the query itself and every photo within the negative radius.
    """

    queries: np.ndarray
    positives: list[np.ndarray]
    non_negatives: list[np.ndarray]
    n_photos: int

    def negatives(self, k: int) -> np.ndarray:
        """The photos beyond the negative radius of query ``k`` (computed on demand: O(N))."""
        mask = np.ones(self.n_photos, dtype=bool)
        mask[self.non_negatives[k]] = False
        return np.flatnonzero(mask)


def build_tuples(positions_m: np.ndarray, pos_radius_m: float = 10.0, neg_radius_m: float = 25.0) -> TupleIndex:
    """Queries are the photos with at least one potential positive and at least one negative.

    ``positions_m`` is (N, 2) east/north metres (see :func:`geoloc.geo.to_local_m`).
    """
    from scipy.spatial import cKDTree

    if pos_radius_m <= 0 or neg_radius_m < pos_radius_m:
        raise GeolocError(
            f"the positive radius ({pos_radius_m:g} m) must be above 0 and not above the negative "
            f"radius ({neg_radius_m:g} m)"
        )
    positions_m = np.asarray(positions_m, dtype=np.float64).reshape(-1, 2)
    n = len(positions_m)
    queries: list[int] = []
    positives: list[np.ndarray] = []
    non_negatives: list[np.ndarray] = []
    if n == 0:
        return TupleIndex(np.zeros(0, dtype=np.int64), [], [], 0)
    tree = cKDTree(positions_m)
    near_pos = tree.query_ball_point(positions_m, r=pos_radius_m)
    near_neg = tree.query_ball_point(positions_m, r=neg_radius_m)
    for i in range(n):
        pos = np.array(sorted(j for j in near_pos[i] if j != i), dtype=np.int64)
        nonneg = np.array(sorted(set(near_neg[i]) | {i}), dtype=np.int64)
        if len(pos) == 0 or len(nonneg) >= n:
            continue
        queries.append(i)
        positives.append(pos)
        non_negatives.append(nonneg)
    return TupleIndex(np.array(queries, dtype=np.int64), positives, non_negatives, n)


def require_trainable(tuples: TupleIndex, n_located: int, pos_radius_m: float, neg_radius_m: float) -> None:
    """Fail with a message that says what the data needs, not just that it failed."""
    need = (
        f"finetune needs GPS-tagged photos of the same places taken from nearby spots: pairs within "
        f"{pos_radius_m:g} m of each other, and other photos more than {neg_radius_m:g} m away"
    )
    if n_located < 3:
        raise TrainingDataError(f"only {n_located} photo(s) with a GPS position to train on; {need}")
    if len(tuples.queries) == 0:
        raise TrainingDataError(
            f"none of the {n_located} training photos has another photo within {pos_radius_m:g} m "
            f"together with one beyond {neg_radius_m:g} m; {need}"
        )


@dataclass
class PlaceSplit:
    """Photo indices for training and for validation; validation holds out whole grid cells."""

    train: np.ndarray
    val: np.ndarray
    cell_m: float
    val_cells: int
    cells: int


def split_by_place(
    positions_m: np.ndarray,
    val_fraction: float = 0.1,
    cell_m: float = 50.0,
    seed: int = 0,
) -> PlaceSplit:
    """Hold out whole square cells of ``cell_m`` metres until about ``val_fraction`` of the photos.

    Holding out photos one by one would leave their neighbours (a metre away, nearly the same
    picture) in training and make validation recall meaningless; whole areas cannot leak that
    way. Cells are drawn in a seeded random order and a cell is taken only when it brings the
    held-out count closer to the target, so a small collection (a 29-photo walk) gets one or two
    cells rather than half its photos. At least one cell always stays in training.
    """
    positions_m = np.asarray(positions_m, dtype=np.float64).reshape(-1, 2)
    n = len(positions_m)
    all_idx = np.arange(n, dtype=np.int64)
    if n == 0 or val_fraction <= 0:
        return PlaceSplit(all_idx, np.zeros(0, dtype=np.int64), cell_m, 0, 0)
    if not 0 < val_fraction < 1:
        raise GeolocError(f"--val-fraction must be between 0 and 1, not {val_fraction:g}")
    if cell_m <= 0:
        raise GeolocError(f"the validation cell size must be above 0 m, not {cell_m:g}")
    keys = np.floor(positions_m / cell_m).astype(np.int64)
    _, cell_of = np.unique(keys, axis=0, return_inverse=True)
    cell_of = cell_of.reshape(-1)
    n_cells = int(cell_of.max()) + 1
    sizes = np.bincount(cell_of, minlength=n_cells)
    target = val_fraction * n
    rng = np.random.default_rng(seed)
    held: list[int] = []
    count = 0
    for c in rng.permutation(n_cells):
        if len(held) + 1 >= n_cells:
            break
        if abs(count + sizes[c] - target) < abs(count - target):
            held.append(int(c))
            count += int(sizes[c])
    is_val = np.isin(cell_of, held)
    return PlaceSplit(all_idx[~is_val], all_idx[is_val], cell_m, len(held), n_cells)
