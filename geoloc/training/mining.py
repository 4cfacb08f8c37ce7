"""Hard-negative mining from a descriptor cache that lives in the main process.

Mining compares the query with 1000 sampled negatives; running the network on all of them for
every query would cost 1000 forward passes, so the paper ranks them with descriptors computed
earlier and refreshed every N queries. A popular PyTorch port refreshes that cache inside
DataLoader workers, whose memory is a copy: the refreshed descriptors never reach the mining code.
Here the cache is a plain tensor owned by the trainer, written only by the main process, and
nothing that mines ever runs in a worker.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from geoloc.training.tuples import TupleIndex


class DescriptorCache:
    """Descriptors of the training photos under the model as it was at the last refresh."""

    def __init__(self, n: int, dim: int):
        self.descriptors = torch.zeros(n, dim, dtype=torch.float32)
        self._sq: torch.Tensor | None = None  # squared norms of the rows
        self.valid = False
        # Queries trained since the last refresh; a refresh is due when it reaches the rate.
        self.queries_since_refresh = 0

    def update(self, descriptors: torch.Tensor) -> None:
        if tuple(descriptors.shape) != tuple(self.descriptors.shape):
            raise ValueError(f"cache shape {tuple(self.descriptors.shape)} != {tuple(descriptors.shape)}")
        self.descriptors.copy_(descriptors.detach().to("cpu", torch.float32))
        self._sq = self.descriptors.pow(2).sum(1)
        self.valid = True
        self.queries_since_refresh = 0

    def due(self, refresh_every: int) -> bool:
        return not self.valid or self.queries_since_refresh >= refresh_every

    def squared_distances(self, i: int, others: np.ndarray) -> np.ndarray:
        # |x|² + |q|² - 2 x·q: one gather and one matrix-vector product, no N×D temporary.
        idx = torch.as_tensor(others, dtype=torch.long)
        q = self.descriptors[i]
        sq = self.descriptors.index_select(0, idx).pow(2).sum(1) if self._sq is None else self._sq[idx]
        qq = q.dot(q) if self._sq is None else self._sq[i]
        d = sq + qq - 2.0 * torch.mv(self.descriptors.index_select(0, idx), q)
        return d.clamp_min(0).numpy()

    def state_dict(self) -> dict:
        return {
            "descriptors": self.descriptors.clone(),
            "valid": self.valid,
            "queries_since_refresh": self.queries_since_refresh,
        }

    def load_state_dict(self, state: dict) -> None:
        self.descriptors = state["descriptors"].to(torch.float32).clone()
        self._sq = self.descriptors.pow(2).sum(1)
        self.valid = bool(state["valid"])
        self.queries_since_refresh = int(state["queries_since_refresh"])


@dataclass
class Tuple:
    """One training tuple, as indices into the training photos."""

    query: int
    positive: int
    negatives: np.ndarray


class HardNegativeMiner:
    """Chooses the best positive and the hardest negatives of a query, as the paper does.

    Per query: sample ``neg_sample`` negatives, add the query's ``n_neg`` hardest from its
    previous pass, keep the ``n_neg`` closest to the query. A query none of whose negatives
    comes within the margin contributes zero loss whatever happens, so it is skipped rather
    than paid for with ``n_neg + 2`` forward passes (``mine`` returns None).
    """

    def __init__(
        self,
        tuples: TupleIndex,
        n_neg: int = 10,
        neg_sample: int = 1000,
        margin: float = 0.1,
        seed: int = 0,
    ):
        if n_neg < 1:
            raise ValueError("n_neg must be at least 1")
        self.tuples = tuples
        self.n_neg = n_neg
        self.neg_sample = neg_sample
        self.margin = margin
        self.rng = np.random.default_rng(seed)
        # Row k: the hardest negatives of query k from its last pass; -1 where none yet.
        self.previous = np.full((len(tuples.queries), n_neg), -1, dtype=np.int64)

    def _sample_negatives(self, k: int) -> np.ndarray:
        """Up to ``neg_sample`` distinct negatives of query ``k``, uniformly at random.

        Drawing ``neg_sample + len(non_negatives)`` distinct photos and dropping the
        non-negatives leaves at least ``neg_sample`` negatives, without building the O(N)
        complement for every query of a large collection.
        """
        n = self.tuples.n_photos
        non_negatives = self.tuples.non_negatives[k]
        if n - len(non_negatives) <= self.neg_sample:
            return self.tuples.negatives(k)
        draw = self.rng.choice(n, size=min(n, self.neg_sample + len(non_negatives)), replace=False)
        draw = draw[~np.isin(draw, non_negatives)]
        return draw[: self.neg_sample].astype(np.int64)

    def mine(self, k: int, cache: DescriptorCache) -> Tuple | None:
        """The tuple for query number ``k`` (position in ``tuples.queries``), or None to skip it."""
        q = int(self.tuples.queries[k])
        positives = self.tuples.positives[k]
        d_pos = cache.squared_distances(q, positives)
        best = int(np.argmin(d_pos))
        positive = int(positives[best])

        sample = self._sample_negatives(k)
        previous = self.previous[k][self.previous[k] >= 0]
        candidates = np.unique(np.concatenate([sample, previous]).astype(np.int64))
        d_neg = cache.squared_distances(q, candidates)
        order = np.argsort(d_neg, kind="stable")[: self.n_neg]
        hardest = candidates[order]
        self.previous[k] = -1
        self.previous[k, : len(hardest)] = hardest
        if not np.any(d_neg[order] < d_pos[best] + self.margin):
            return None
        return Tuple(q, positive, hardest)

    def state_dict(self) -> dict:
        return {"previous": torch.from_numpy(self.previous.copy()), "rng": rng_state(self.rng)}

    def load_state_dict(self, state: dict) -> None:
        previous = state["previous"].numpy().astype(np.int64)
        if previous.shape != self.previous.shape:
            raise ValueError("the mining state does not match the training tuples")
        self.previous = previous.copy()
        set_rng_state(self.rng, state["rng"])


def rng_state(rng: np.random.Generator) -> dict:
    """The generator's state as plain ints and strings, so ``torch.load(weights_only=True)`` reads it."""
    state = rng.bit_generator.state
    return {
        "bit_generator": state["bit_generator"],
        "state": int(state["state"]["state"]),
        "inc": int(state["state"]["inc"]),
        "has_uint32": int(state["has_uint32"]),
        "uinteger": int(state["uinteger"]),
    }


def set_rng_state(rng: np.random.Generator, saved: dict) -> None:
    rng.bit_generator.state = {
        "bit_generator": saved["bit_generator"],
        "state": {"state": int(saved["state"]), "inc": int(saved["inc"])},
        "has_uint32": int(saved["has_uint32"]),
        "uinteger": int(saved["uinteger"]),
    }

