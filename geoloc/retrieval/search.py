"""Nearest-neighbour search over a database's descriptors (faiss), and its on-disk cache.

Descriptors are L2-normalised, so inner product is cosine similarity. Small databases are
searched exactly, in place on the memory-mapped descriptor file; large ones through an IVF
index that is built once and cached on disk while the database's descriptors stay the same;
very large ones through the compressed index of :mod:`geoloc.retrieval.compressed`.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np


@dataclass
class CompressedConfig:
    """IVF-PQ settings; the defaults are those measured in docs/scale.md (1e5 and 1e6 × 4096-D)."""

    #: Located photos from which search is compressed (below: exact or IVF-Flat, in RAM).
    threshold: int = 100_000
    #: Bytes of PQ code per photo (sub-quantizers of 8 bits); None: dim / 8, e.g. 512 for 4096-D
    #: (1/32 of the raw descriptor). Sub-vectors of 8 values, not 16: faiss encodes those 6×
    #: faster here (4,000 × 4096-D in 0.42 s against 2.7 s), and encoding is most of a build.
    code_bytes: Optional[int] = None
    #: Rotate descriptors with OPQ before PQ (better codes, much longer training at 4096-D).
    opq: bool = False
    #: IVF cells: about this many times √N (1,000 for a million photos).
    cells_per_sqrt_n: float = 1.0
    #: Cells visited per query.
    nprobe: int = 16
    #: Candidates the compressed index proposes, re-scored exactly; the answer's top-k come from them.
    #: At 1e6 × 4096-D (docs/scale.md) 256 kept the exact top-1 for 85 % of the real queries, 512
    #: for 98 %, 1024 for all of them, at 11–16 ms a query: the codes cannot order hundreds of
    #: near-duplicates of one view, the exact scores can.
    shortlist: int = 1024
    #: Training vectors per cell (and per PQ centroid, of which there are 256), at most.
    train_per_cell: int = 40
    kmeans_iterations: int = 10
    #: Trained anew when the descriptor file holds this many times the rows it was trained on.
    growth: float = 4.0
    seed: int = 1234

    def code_size(self, dim: int) -> int:
        m = int(self.code_bytes or max(1, dim // 8))
        while dim % m:  # PQ needs sub-vectors of equal length
            m -= 1
        return m

    def cells(self, n: int) -> int:
        return int(max(1, min(round(self.cells_per_sqrt_n * math.sqrt(max(n, 1))), n // self.train_per_cell or 1)))

    def training_size(self, n: int) -> int:
        return int(min(n, max(self.cells(n), 256) * self.train_per_cell))

    def key(self, dim: int) -> dict:
        """What the stored index depends on (besides the rows): another key means rebuild."""
        return {"dim": dim, "code_bytes": self.code_size(dim), "opq": self.opq,
                "cells_per_sqrt_n": self.cells_per_sqrt_n, "train_per_cell": self.train_per_cell,
                "kmeans_iterations": self.kmeans_iterations, "seed": self.seed}


@dataclass
class SearchConfig:
    """faiss index choice: exact below ``ivf_threshold`` vectors, IVF above it."""

    ivf_threshold: int = 5000
    # IVF cells: about 4·√N; cells probed per query (recall/speed trade-off).
    cells_per_sqrt_n: float = 4.0
    nprobe: int = 32
    # k-means for the coarse quantiser: at most this many training vectors per cell, this many
    # iterations (a coarse quantiser needs no more; faiss's default of 25 costs 2.5× the time).
    train_per_cell: int = 64
    kmeans_iterations: int = 10
    seed: int = 1234
    #: Past ``compressed.threshold`` located photos (and the IVF threshold), IVF-PQ codes in RAM
    #: and exact re-scoring from the store (``geoloc.retrieval.compressed``) instead of the descriptors in RAM.
    compressed: CompressedConfig = field(default_factory=CompressedConfig)

    def use_compressed(self, n: int) -> bool:
        return n >= max(self.ivf_threshold, self.compressed.threshold)


class SearchIndex:
    """Inner-product search over L2-normalised descriptors (inner product = cosine).

    Exact search for small databases, where it is both fastest and exact: ``faiss.knn`` scans
    the (memory-mapped) descriptor matrix in place, without copying it. Above
    ``SearchConfig.ivf_threshold`` vectors, an IVF index with about 4·√N cells. Training and
    filling it costs far more than one exact scan, so it pays only when it is reused: with a
    ``cache`` file it is written once and read back on later runs while the database's
    descriptors stay the same (``cache_key``).
    """

    def __init__(
        self,
        descriptors: np.ndarray,
        config: SearchConfig | None = None,
        cache: Path | None = None,
        cache_key: str | None = None,
        n_queries: int | None = None,
    ):
        """``n_queries``: how many queries are about to be searched, when known. Without a
        cached IVF index, one is built only if scanning exactly for that many queries would
        cost more than building it; otherwise this search is exact (``ivf_deferred``).
        """
        cfg = config or SearchConfig()
        if descriptors.ndim != 2:
            raise ValueError("descriptors must be an N×D matrix")
        self.size, self.dim = descriptors.shape
        self.config = cfg
        self.cached = False
        self.ivf_deferred = False
        self.nlist = 0
        self._index = None
        self._matrix = None
        self.kind = "flat"
        if self.size >= cfg.ivf_threshold:
            nlist = max(1, int(round(cfg.cells_per_sqrt_n * math.sqrt(self.size))))
            if cache is not None and cache_key is not None:
                self._index = _read_cached_index(cache, cache_key)
                self.cached = self._index is not None
            if self._index is None and n_queries is not None and not self._ivf_pays(nlist, n_queries):
                self.ivf_deferred = True
            elif self._index is None:
                self._index = self._build_ivf(descriptors, cfg, nlist)
                if cache is not None and cache_key is not None:
                    _write_cached_index(cache, cache_key, self._index)
            if self._index is not None:
                self.kind = "ivf"
                self.nlist = nlist
                self._index.nprobe = min(cfg.nprobe, nlist)
        if self._index is None:
            self._matrix = descriptors if descriptors.dtype == np.float32 else descriptors.astype(np.float32)

    def _train_size(self, nlist: int) -> int:
        """Vectors the coarse quantiser's k-means is trained on."""
        return min(self.size, nlist * max(self.config.train_per_cell, 39))

    def _ivf_pays(self, nlist: int, n_queries: int) -> bool:
        """Building the IVF index (k-means, then assigning every vector) against exact scans."""
        build = nlist * (self._train_size(nlist) * self.config.kmeans_iterations + self.size)
        return n_queries * self.size > build

    def _build_ivf(self, descriptors: np.ndarray, cfg: SearchConfig, nlist: int):
        import faiss

        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        n_train = self._train_size(nlist)
        rng = np.random.default_rng(cfg.seed)
        rows = np.sort(rng.choice(self.size, n_train, replace=False)) if n_train < self.size else None
        train = np.ascontiguousarray(descriptors[rows] if rows is not None else descriptors, dtype=np.float32)
        index.cp.seed = cfg.seed
        index.cp.niter = cfg.kmeans_iterations
        index.cp.min_points_per_centroid = 1  # no warning below 39 points per cell
        index.train(train)
        del train
        chunk = 65536  # add in slices: a memory-mapped matrix is never loaded whole
        for start in range(0, self.size, chunk):
            index.add(np.ascontiguousarray(descriptors[start:start + chunk], dtype=np.float32))
        return index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores (descending) and row ids, both Q×k; ids are -1 where fewer than k exist."""
        import faiss

        q = query_matrix(queries, self.dim)
        k = max(1, min(int(k), self.size))
        with query_threads(len(q)):
            if self._index is not None:
                return self._index.search(q, k)
            return faiss.knn(q, self._matrix, k, metric=faiss.METRIC_INNER_PRODUCT)


def query_matrix(queries: np.ndarray, dim: int) -> np.ndarray:
    """Queries as faiss takes them (Q×D float32, contiguous), refused if of another dimension."""
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if q.shape[1] != dim:
        raise ValueError(f"query descriptors have {q.shape[1]} dimensions, index has {dim}")
    return q


@contextlib.contextmanager
def query_threads(n_queries: int) -> Iterator[None]:
    """faiss threads for a search of ``n_queries``: faiss spreads a search over queries, and with
    fewer queries than threads the idle ones only spin (a single query on 2 busy cores took
    16 ms instead of 0.2 ms)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    use = max(1, min(threads, n_queries))
    if use != threads:
        faiss.omp_set_num_threads(use)
    try:
        yield
    finally:
        if use != threads:
            faiss.omp_set_num_threads(threads)


def _read_cached_index(path: Path, key: str):
    """The cached IVF index when its key matches, else None (a stale or damaged cache)."""
    import faiss

    try:
        if Path(str(path) + ".key").read_text().strip() != key:
            return None
        return faiss.read_index(str(path))
    except Exception:  # missing, truncated, from another faiss: rebuild
        return None


def _write_cached_index(path: Path, key: str, index) -> None:
    """Best effort: a cache that cannot be written only costs the next run a rebuild.

    The index goes first and its key second: a crash in between leaves an index whose key does
    not match, which is read as stale and rebuilt, never used for the wrong descriptors.
    """
    import faiss

    from geoloc.files import atomic_write, replacing

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        Path(str(path) + ".key").unlink(missing_ok=True)
        with replacing(path, durable=False) as tmp:
            faiss.write_index(index, str(tmp))
        atomic_write(Path(str(path) + ".key"), key + "\n", durable=False)
    except Exception:
        pass


def index_cache(database, records, search: SearchConfig) -> tuple[Path, str]:
    """Where the database's IVF index is cached, and the key that says it is still current.

    One file per database (named after its folder), so caches do not pile up. The key covers
    everything the index depends on: the folder, the model, the settings, and the row numbers
    of the located descriptors. A row's content never changes while it is referenced; a
    compaction renumbers rows, and then the list of located rows differs too (every row after
    a removed one moves down).
    """
    from geoloc.paths import cache_dir

    folder = os.path.realpath(database.path)
    rows = np.fromiter((r.row for r in records), dtype=np.int64, count=len(records))
    digest = hashlib.sha256()
    for part in (
        folder,
        str(database.manifest.get("weights_hash", "")),
        str(database.dim),
        f"{search.cells_per_sqrt_n}:{search.train_per_cell}:{search.kmeans_iterations}:{search.seed}",
    ):
        digest.update(part.encode("utf-8", "surrogateescape") + b"\0")
    digest.update(rows.tobytes())
    name = hashlib.sha256(folder.encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return cache_dir() / "search" / f"{name}.ivf.faiss", digest.hexdigest()
