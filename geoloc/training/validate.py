"""What an epoch achieved: validation recall@N and the training objective, from descriptors.

Both are computed from one descriptor pass over the photos at the end of an epoch, the same
pass that refreshes the mining cache, so measuring costs no extra forward passes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from geoloc.training.tuples import TupleIndex

RECALL_AT = (1, 5, 10)


def recall_at_n(
    descriptors: torch.Tensor,
    positions_m: np.ndarray,
    queries: Sequence[int],
    threshold_m: float = 25.0,
    ns: Sequence[int] = RECALL_AT,
) -> tuple[dict[str, float], int]:
    """Leave-one-out recall@N: each query searches every *other* photo.

    A query counts only when some other photo lies within ``threshold_m`` of it (otherwise no
    answer could be right). Returns ``({"1": r1, "5": r5, "10": r10}, counted queries)``.
    """
    positions_m = np.asarray(positions_m, dtype=np.float64)
    desc = descriptors.float()
    n = desc.shape[0]
    hits = {str(k): 0 for k in ns}
    counted = 0
    top = min(max(ns), n - 1)
    if top < 1:
        return {k: 0.0 for k in hits}, 0
    queries = np.asarray(list(queries), dtype=np.int64)
    for a in range(0, len(queries), 256):
        qs = queries[a:a + 256]
        sims = desc[torch.as_tensor(qs)] @ desc.T
        sims[torch.arange(len(qs)), torch.as_tensor(qs)] = float("-inf")
        ranked = sims.topk(top, dim=1).indices.numpy()
        for row, q in enumerate(qs):
            dist = np.hypot(*(positions_m - positions_m[q]).T)
            dist[q] = np.inf
            if not np.any(dist <= threshold_m):
                continue
            counted += 1
            good = dist[ranked[row]] <= threshold_m
            for k in ns:
                if good[:k].any():
                    hits[str(k)] += 1
    if counted == 0:
        return {k: 0.0 for k in hits}, 0
    return {k: v / counted for k, v in hits.items()}, counted


def countable_queries(positions_m: np.ndarray, queries: Sequence[int], threshold_m: float = 25.0) -> int:
    """How many of ``queries`` have another photo within ``threshold_m`` (recall is defined for them)."""
    from scipy.spatial import cKDTree

    queries = list(queries)
    if not queries or len(positions_m) < 2:
        return 0
    tree = cKDTree(np.asarray(positions_m, dtype=np.float64))
    near = tree.query_ball_point(np.asarray(positions_m)[queries], r=threshold_m)
    return sum(1 for q, found in zip(queries, near) if len(found) > 1 or (found and found[0] != q))


def recall_score(recall: dict[str, float]) -> float:
    """One number to pick the best epoch by: the mean of recall@1, @5 and @10.

    recall@1 alone swings by a whole query on small validation sets; the mean is steadier.
    """
    return float(np.mean([recall[k] for k in sorted(recall, key=int)]))


def triplet_objective(
    descriptors: torch.Tensor,
    tuples: TupleIndex,
    margin: float = 0.1,
    n_neg: int = 10,
    max_queries: int = 2000,
) -> float:
    """The mean training loss with the best positive and the ``n_neg`` hardest negatives among
    *all* negatives (no sampling), under the given descriptors.

    It is the loss the paper minimises, evaluated exactly at one model state; unlike the
    running loss of an epoch it is comparable across epochs. Large collections are scored on a
    fixed subset of ``max_queries`` queries (the same subset every epoch).
    """
    n_queries = len(tuples.queries)
    if n_queries == 0:
        return 0.0
    ks = np.arange(n_queries)
    if n_queries > max_queries:
        ks = np.sort(np.random.default_rng(12345).choice(n_queries, size=max_queries, replace=False))
    desc = descriptors.float()
    sq = (desc * desc).sum(1)
    total = 0.0
    for a in range(0, len(ks), 256):
        part = ks[a:a + 256]
        qs = torch.as_tensor(tuples.queries[part])
        dist = (sq[qs, None] + sq[None, :] - 2 * desc[qs] @ desc.T).clamp_min(0)
        for row, k in enumerate(part):
            d = dist[row]
            d_pos = d[torch.as_tensor(tuples.positives[k])].min()
            mask = torch.ones(len(desc), dtype=torch.bool)
            mask[torch.as_tensor(tuples.non_negatives[k])] = False
            d_neg = d[mask]
            hardest = torch.topk(d_neg, min(n_neg, len(d_neg)), largest=False).values
            total += float(torch.clamp(margin + d_pos - hardest, min=0).sum())
    return total / len(ks)
