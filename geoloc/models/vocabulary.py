"""Fitting a NetVLAD vocabulary: which photos, which of their local features, and k-means.

A model whose NetVLAD centroids are not trained yet (``lite0-vlad``, a fresh ``vgg16`` base for
fine-tuning) gets them from k-means on local features of real photos: the database's when
indexing, the training set's when fine-tuning. Both draw the sample the same way, here, so the
same photos give the same vocabulary whichever command fitted it.
"""

from __future__ import annotations

import math
from pathlib import Path
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

    def pick(self, key: int, features: torch.Tensor) -> torch.Tensor:
        """This photo's share of its C×h×w local features, as (share)×C."""
        import torch

        flat = features.reshape(features.shape[0], -1).T  # (h·w)×C
        if flat.shape[0] > self.per_photo:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(key))
            flat = flat[torch.randperm(flat.shape[0], generator=gen)[: self.per_photo]]
        return flat.float().clone()

    def put(self, key: int, picked: torch.Tensor) -> None:
        """A photo's share, as :meth:`pick` chose it (now, or in an interrupted earlier run)."""
        self._chunks[int(key)] = picked

    def add(self, key: int, features: torch.Tensor) -> torch.Tensor:
        """One photo's C×h×w local features; returns the share kept."""
        picked = self.pick(key, features)
        self.put(key, picked)
        return picked

    def __len__(self) -> int:
        return len(self._chunks)

    def __contains__(self, key: int) -> bool:
        return int(key) in self._chunks

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


class FitCache:
    """The shares of an interrupted vocabulary fit, one small file per sample photo.

    Fitting a first database's vocabulary runs the network over its whole sample before any
    descriptor can be stored; a kill or Ctrl-C in the middle would throw that work away. Each
    photo's share is written here as it is computed, so the next run resumes where this one
    stopped. The cache is only reused for the very same sample and settings, and is removed once
    the vocabulary is stored.
    """

    def __init__(self, folder: Path, sample: Sequence[Path], settings: dict):
        import json
        import os
        import shutil

        self.folder = Path(folder)
        key = {"sample": [os.fsencode(p).hex() for p in sample], **settings}
        self._stamp = json.dumps(key, sort_keys=True)
        stamp_file = self.folder / "sample.json"
        try:
            current = stamp_file.read_text()
        except (OSError, UnicodeDecodeError):
            current = None
        if current != self._stamp:
            shutil.rmtree(self.folder, ignore_errors=True)
        self._ready = current == self._stamp

    def _file(self, key: int) -> Path:
        return self.folder / f"{int(key):06d}.npy"

    def done(self) -> set[int]:
        if not self._ready:
            return set()
        return {int(p.stem) for p in self.folder.glob("[0-9]*.npy")}

    def get(self, key: int):
        import numpy as np
        import torch

        try:
            return torch.from_numpy(np.load(self._file(key)))
        except (OSError, ValueError):
            return None

    def put(self, key: int, picked) -> None:
        """Best effort: a share that cannot be cached is only computed again next time."""
        import numpy as np

        from geoloc.files import atomic_write, replacing

        try:
            if not self._ready:
                self.folder.mkdir(parents=True, exist_ok=True)
                atomic_write(self.folder / "sample.json", self._stamp, durable=False)
                self._ready = True
            with replacing(self._file(key), durable=False) as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, picked.numpy())
        except OSError:
            pass

    def clear(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)
