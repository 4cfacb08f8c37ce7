"""Learned keypoints of database photos, cached on first use.

A candidate is verified against many queries, and its keypoints depend on its file alone, so
they are computed once and kept: under ``GEOLOC_HOME/cache/features/<verifier>-<size>/``, one
file per photo, named after its resolved path. Why not in the database: a database made before
learned verifiers (or indexed without them) then works unchanged, nothing is computed at index
time for a verifier nobody asks for, and the cache can be deleted at any time.

Each file records the photo's size and mtime (and a format version): a photo changed since
gives a miss, and its new keypoints replace the old file, so the cache never holds two versions
of one photo. A file bounded by the verifier's keypoints (``LearnedSpec.bytes_per_photo``: 36 KiB
for XFeat, 132 KiB for ALIKED at 512 keypoints) is written atomically; one that cannot be read is
a miss, never an error.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np

from geoloc.retrieval.verify import Cells

#: Bump when what is stored changes meaning (another network, keypoint count, layout).
FORMAT = 2


class FeatureCache:
    """One verifier's keypoints at one image size, by photo path."""

    def __init__(self, verifier: str, max_side: int, root: Path | None = None):
        if root is None:
            from geoloc.paths import cache_dir

            root = cache_dir() / "features"
        self.folder = Path(root) / f"{verifier}-{int(max_side)}"

    def file_for(self, photo: Path | str) -> Path:
        key = hashlib.sha256(os.path.realpath(photo).encode("utf-8", "surrogateescape")).hexdigest()
        return self.folder / key[:2] / f"{key[2:32]}.npz"

    def get(self, photo: Path | str, size: int, mtime_ns: int) -> Cells | None:
        """The cached keypoints of ``photo`` as it is now (``size``, ``mtime_ns``), else None."""
        try:
            with np.load(self.file_for(photo), allow_pickle=False) as data:
                stamp = [int(v) for v in data["stamp"]]
                if stamp != [FORMAT, int(size), int(mtime_ns)]:
                    return None
                w, h = (int(v) for v in data["image_size"])
                return Cells(data["desc"].astype(np.float32), data["xy"].astype(np.float32),
                             float(data["stride"]), (w, h))
        except (OSError, KeyError, ValueError, EOFError):
            return None

    def put(self, photo: Path | str, size: int, mtime_ns: int, cells: Cells) -> None:
        """Keep ``cells`` for ``photo``; a cache that cannot be written only costs time."""
        from geoloc.files import atomic_write

        buffer = io.BytesIO()
        np.savez(buffer, stamp=np.array([FORMAT, int(size), int(mtime_ns)], dtype=np.int64),
                 xy=cells.xy.astype(np.float32), desc=cells.desc.astype(np.float16),
                 stride=np.float32(cells.stride), image_size=np.array(cells.size or (0, 0), dtype=np.int64))
        target = self.file_for(photo)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, buffer.getvalue(), durable=False)
        except OSError:
            pass
