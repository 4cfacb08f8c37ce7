"""Fitting a NetVLAD vocabulary: which photos, which of their local features, and k-means.

A model whose NetVLAD centroids are not trained yet (``lite0-vlad``, a fresh ``vgg16`` base for
fine-tuning) gets them from k-means on local features of real photos: the database's when
indexing, the training set's when fine-tuning. Both draw the sample the same way, here, so the
same photos give the same vocabulary whichever command fitted it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence, TypeVar

from geoloc.errors import GeolocError, ModelError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from geoloc.models.model import GeolocModel

T = TypeVar("T")


def spread(items: Sequence[T], n: int) -> list[T]:
    """Up to ``n`` items spread evenly over the (sorted) list: every folder or area gets a say."""
    if n <= 0:
        return []
    if len(items) <= n:
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


class FeatureSampler:
    """A reproducible N×C sample of the local features the pooling layer sees, for k-means.

    Each photo contributes an equal share, chosen by a generator seeded from the photo's key (a
    number the caller gives it: its position in the sample, or in the training set), so the
    sample depends neither on batching nor on timing.
    """

    def __init__(self, photos: int, max_features: int = 50_000, seed: int = 0):
        self.per_photo = max(1, math.ceil(max_features / max(1, photos)))
        self.max_features = max_features
        self.seed = seed
        self._chunks: dict[int, torch.Tensor] = {}

    def add(self, key: int, features: torch.Tensor) -> None:
        """One photo's C×h×w local features."""
        import torch

        flat = features.reshape(features.shape[0], -1).T  # (h·w)×C
        if flat.shape[0] > self.per_photo:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(key))
            flat = flat[torch.randperm(flat.shape[0], generator=gen)[: self.per_photo]]
        self._chunks[int(key)] = flat.float().clone()

    def __len__(self) -> int:
        return len(self._chunks)

    def sample(self) -> torch.Tensor:
        import torch

        if not self._chunks:
            return torch.zeros((0, 0))
        sample = torch.cat([self._chunks[k] for k in sorted(self._chunks)])
        if sample.shape[0] > self.max_features:
            gen = torch.Generator().manual_seed(self.seed)
            sample = sample[torch.randperm(sample.shape[0], generator=gen)[: self.max_features]]
        return sample


def fit_vocabulary(model: GeolocModel, features: torch.Tensor, photos: int, *, seed: int = 0,
                   hint: str = "use more photos, or a larger --max-side") -> None:
    """k-means on the sampled features; a one-line error when there are too few of them."""
    clusters = model.num_clusters or 1
    if features.shape[0] < clusters:
        raise GeolocError(
            f"too few photos to fit the {clusters}-cluster vocabulary of {model.name or model.arch}: "
            f"{features.shape[0]} local features from {photos} photos; {hint}"
        )
    try:
        model.fit_vocabulary(features, seed=seed)
    except ModelError as exc:
        raise GeolocError(f"cannot fit the vocabulary: {exc}") from None
