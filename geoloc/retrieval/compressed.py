"""Compressed search for large databases: IVF-PQ codes in RAM, exact scores from the store.

A million 4096-D descriptors are 16 GB: more than a laptop holds for exact or IVF-Flat search.
Past ``CompressedConfig.threshold`` located photos, search goes through a faiss IVF-PQ index
(optionally OPQ-rotated first) of a few hundred bytes a photo, which proposes a shortlist; the
shortlist is then re-scored with the exact descriptors read from the memory-mapped
``descriptors.f32``, so scores are exact cosines and the top-1 is the exact one whenever it made
the shortlist (measured: docs/scale.md).

The index is a cache beside the data, in the database folder (``search/``), never needed for an
answer: delete it and it is rebuilt. Its faiss ids are row numbers of the descriptor file, which
only ever grows between compactions, so the index is valid for the rows it covers as long as their
entries in ``descriptors.idx`` (a checksum per row) are those it was built from; rows added later
are added to it (trained once, then added to), and it is trained anew when the file has outgrown
the data it was trained on (``growth``) or a compaction renumbered the rows. Unlocated photos and
dead rows stay in the index and are masked out at search time (an ``IDSelectorBitmap`` of the
located rows).

Shards: ``add_rows`` fills an index from one range of rows; on Ray each worker fills a copy of
the trained index with its range, straight from the descriptor file (shared storage), and the
driver merges them with faiss's own ``merge_from``; ``merge_on_disk`` merges shard files into
on-disk inverted lists (``faiss.contrib.ondisk``) for indexes larger than RAM.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from geoloc.retrieval.search import CompressedConfig, query_matrix, query_threads

#: The folder of the index inside a database, and the file that says which index is current.
FOLDER = "search"
STATE = "ivfpq.json"
FORMAT = 1
#: Rows added to (or read from the store into) an index per call: a memory-mapped file is never
#: loaded whole.
CHUNK = 32768


# ------------------------------------------------------------------------------------------------
# Building


def train(matrix: np.ndarray, rows: np.ndarray, config: CompressedConfig):
    """A trained, empty IVF-PQ index for the descriptors of ``rows`` (a sample of them)."""
    import faiss

    dim = matrix.shape[1]
    n = len(rows)
    nlist, m = config.cells(n), config.code_size(dim)
    bits = min(8, max(1, int(math.log2(max(n, 2)))))  # 256 centroids need 256 training vectors
    spec = (f"OPQ{m}," if config.opq else "") + f"IVF{nlist},PQ{m}x{bits}"
    index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    ivf.cp.niter = config.kmeans_iterations
    ivf.cp.seed = config.seed
    ivf.cp.min_points_per_centroid = 1
    # Polysemous training reorders codes for Hamming filtering, which is not used here, and took
    # 26 of the 27 s of a 20k × 256-D training.
    ivf.do_polysemous_training = False
    ivf.pq.cp.niter = config.kmeans_iterations
    ivf.pq.cp.seed = config.seed
    if config.opq:
        opq = faiss.downcast_VectorTransform(index.chain.at(0))
        opq.niter = config.kmeans_iterations
    size = config.training_size(n)
    rng = np.random.default_rng(config.seed)
    picked = np.sort(rng.choice(rows, size, replace=False)) if size < n else np.sort(rows)
    sample = np.empty((len(picked), dim), dtype=np.float32)
    for start in range(0, len(picked), CHUNK):
        sample[start:start + CHUNK] = matrix[picked[start:start + CHUNK]]
    index.train(sample)
    return index


def add_rows(index, matrix: np.ndarray, start: int, stop: int) -> None:
    """Add rows ``start:stop`` of the descriptor file, their row numbers as ids."""
    for a in range(start, stop, CHUNK):
        b = min(stop, a + CHUNK)
        index.add_with_ids(np.ascontiguousarray(matrix[a:b], dtype=np.float32), np.arange(a, b, dtype=np.int64))


def build_shard(trained: np.ndarray, path: str, dim: int, start: int, stop: int) -> np.ndarray:
    """One shard: a copy of the serialized trained index filled with rows ``start:stop`` of the
    descriptor file at ``path`` (what a Ray worker runs), serialized for the trip back."""
    import faiss

    index = faiss.deserialize_index(trained)
    rows = os.path.getsize(path) // (4 * dim)
    add_rows(index, np.memmap(path, dtype=np.float32, mode="r", shape=(rows, dim)), start, stop)
    return faiss.serialize_index(index)


def add_rows_on_ray(ray, index, path: Path, dim: int, start: int, stop: int, shards: int) -> None:
    """Fill ``index`` with rows ``start:stop``: one shard per Ray task, merged as they come with
    faiss's ``merge_from`` (ids are kept: they are row numbers already)."""
    import faiss

    if stop <= start:
        return
    empty = faiss.clone_index(index)
    empty.reset()
    trained = ray.put(faiss.serialize_index(empty))
    task = ray.remote(num_cpus=1)(build_shard)
    bounds = np.linspace(start, stop, max(1, shards) + 1).round().astype(np.int64)
    pending = [task.remote(trained, os.fspath(path), dim, int(a), int(b))
               for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        shard = faiss.deserialize_index(ray.get(done[0]))
        index.merge_from(shard, 0)


def merge_on_disk(trained, shard_files: Sequence[Path], ivfdata: Path):
    """Shards written to files merged into on-disk inverted lists (``faiss.contrib.ondisk``):
    RAM then holds only the quantizers; the codes are paged in from ``ivfdata`` as cells are
    probed. For indexes past the RAM of one machine (docs/scale.md, 1e8 photos)."""
    from faiss.contrib.ondisk import merge_ondisk

    merge_ondisk(trained, [os.fspath(f) for f in shard_files], os.fspath(ivfdata))
    return trained


# ------------------------------------------------------------------------------------------------
# The cache in the database folder


def rows_digest(index_file: Path, rows: int) -> str:
    """The checksummed entries (``descriptors.idx``) of the first ``rows`` rows: the same digest
    means the same descriptors in the same rows, so an index built from them still holds."""
    from geoloc.database.rows import ENTRY

    digest = hashlib.sha256()
    remaining = rows * ENTRY
    try:
        with open(index_file, "rb") as fh:
            while remaining > 0:
                block = fh.read(min(remaining, 8 << 20))
                if not block:
                    return ""
                digest.update(block)
                remaining -= len(block)
    except OSError:
        return ""
    return digest.hexdigest()


@dataclass
class State:
    """What the current index file holds: its rows, how it was trained, with what settings."""

    token: str
    rows: int
    digest: str
    trained_rows: int
    key: dict
    format: int = FORMAT


def read_cached(folder: Path):
    """``(index, state)`` from the database's ``search/`` folder, or None (missing, damaged,
    from another faiss): a cache that cannot be read is rebuilt, never trusted."""
    import faiss

    try:
        data = json.loads((folder / STATE).read_text())
        state = State(**data)
        if state.format != FORMAT:
            return None
        return faiss.read_index(os.fspath(folder / f"ivfpq-{state.token}.faiss")), state
    except Exception:
        return None


def write_cached(folder: Path, index, state: State) -> bool:
    """Best effort (a reader may not be allowed to write): the index under a new name, then the
    state that names it, then older index files. A crash or a second writer in between leaves a
    state naming a complete file, or one that is gone (rebuilt): never the wrong index."""
    import faiss

    from geoloc.files import atomic_write, replacing

    try:
        folder.mkdir(exist_ok=True)
        target = folder / f"ivfpq-{state.token}.faiss"
        with replacing(target, durable=False) as tmp:
            faiss.write_index(index, os.fspath(tmp))
        atomic_write(folder / STATE, json.dumps(asdict(state)) + "\n", durable=False)
        current = json.loads((folder / STATE).read_text()).get("token")
        for old in folder.glob("ivfpq-*.faiss"):
            if old.name != f"ivfpq-{current}.faiss":
                old.unlink(missing_ok=True)
        return True
    except Exception:
        return False


def ensure_index(database, matrix: np.ndarray, located_rows: np.ndarray, config: CompressedConfig, *,
                 write: bool = True, ray=None, shards: int = 0,
                 status: Callable[[str], None] = lambda text: None):
    """The database's compressed index over every row of ``matrix`` (its whole descriptor file),
    read from its cache, extended with the rows added since, or built (``ray``: shards on the
    cluster). Returns ``(index, what)``, what being "cached", "extended", "built" or "retrained".
    """
    folder = Path(database.path) / FOLDER
    rows = int(matrix.shape[0])
    dim = int(matrix.shape[1])
    key = config.key(dim)
    idx_file = database.index_path()
    found = read_cached(folder)
    what = "built"
    index = state = None
    if found is not None:
        index, state = found
        if state.key != key or state.rows > rows or rows_digest(idx_file, state.rows) != state.digest:
            index = state = None  # other settings, or rows renumbered (compaction, repair)
        elif rows > config.growth * state.trained_rows:
            index, state, what = None, None, "retrained"
    if index is not None and state.rows == rows:
        return index, "cached"
    start = 0
    if index is None:
        status(f"training the compressed index on {config.training_size(len(located_rows)):,} of "
               f"{len(located_rows):,} descriptors")
        index = train(matrix, located_rows, config)
        trained_rows = rows
    else:
        start, trained_rows, what = state.rows, state.trained_rows, "extended"
    status(f"adding {rows - start:,} descriptors to the compressed index")
    if ray is not None and rows - start > CHUNK:
        add_rows_on_ray(ray, index, database.descriptor_path(), dim, start, rows, shards)
    else:
        add_rows(index, matrix, start, rows)
    if write:
        write_cached(folder, index, State(token=secrets.token_hex(8), rows=rows,
                                          digest=rows_digest(idx_file, rows), trained_rows=trained_rows, key=key))
    return index, what


# ------------------------------------------------------------------------------------------------
# Searching


class LocatedRows:
    """The located photos' descriptors as a matrix (``len``, ``shape``, ``rows[i]``) without
    the copy: row ``i`` is record ``i``'s row of the memory-mapped store, read when asked for
    (the located photos of a million-photo database would be a 16 GB copy)."""

    def __init__(self, matrix: np.ndarray, record_rows: np.ndarray):
        self.matrix = matrix
        self.record_rows = record_rows
        self.shape = (len(record_rows), int(matrix.shape[1]))
        self.dtype = matrix.dtype

    def __len__(self) -> int:
        return len(self.record_rows)

    def __getitem__(self, index) -> np.ndarray:
        return np.asarray(self.matrix[self.record_rows[index]])


class CompressedSearch:
    """``search(queries, k)`` over the located photos, as :class:`geoloc.retrieval.search.SearchIndex`
    answers it (exact cosines, descending; ids are positions in ``records``, -1 past the end)."""

    kind = "ivfpq"
    ivf_deferred = False

    def __init__(self, index, matrix: np.ndarray, record_rows: np.ndarray, config: CompressedConfig,
                 how: str = "built"):
        import faiss

        self.index = index
        self.matrix = matrix
        self.config = config
        self.how = how
        self.size = len(record_rows)
        self.dim = int(matrix.shape[1])
        self.ivf = faiss.extract_index_ivf(index)
        self.nlist = int(self.ivf.nlist)
        self._slot = np.full(int(matrix.shape[0]), -1, dtype=np.int64)
        self._slot[record_rows] = np.arange(len(record_rows))
        mask = np.zeros(int(matrix.shape[0]), dtype=bool)
        mask[record_rows] = True
        self._bitmap = np.packbits(mask, bitorder="little")  # kept alive: faiss holds a pointer
        self._selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(self._bitmap))
        self._transform = (faiss.downcast_VectorTransform(index.chain.at(0))
                           if isinstance(index, faiss.IndexPreTransform) else None)

    def memory_bytes(self) -> int:
        """What the index holds in RAM: codes and ids of every row, the quantizers."""
        import faiss

        return int(faiss.serialize_index(self.index).nbytes)

    def shortlist(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Row numbers the compressed codes rank first (-1 where fewer exist)."""
        import faiss

        q = self._transform.apply(queries) if self._transform is not None else queries
        params = faiss.SearchParametersIVF(sel=self._selector, nprobe=min(self.config.nprobe, self.nlist))
        _, rows = self.ivf.search(np.ascontiguousarray(q, dtype=np.float32), k, params=params)
        return rows

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        q = query_matrix(queries, self.dim)
        k = max(1, min(int(k), self.size))
        with query_threads(len(q)):
            rows = self.shortlist(q, max(k, self.config.shortlist))
            scores = np.full((len(q), k), -np.inf, dtype=np.float32)
            ids = np.full((len(q), k), -1, dtype=np.int64)
            for i in range(len(q)):
                found = np.sort(rows[i][rows[i] >= 0])  # in file order: the store reads forward
                if not len(found):
                    continue
                # faiss, not numpy: a BLAS product of this size wakes a second thread, and on
                # busy cores waiting for it cost 12 ms a query (measured), 10× the product.
                exact = np.ascontiguousarray(self.matrix[found], dtype=np.float32)
                best_scores, best = faiss.knn(q[i:i + 1], exact, min(k, len(found)), metric=faiss.METRIC_INNER_PRODUCT)
                n = len(best[0])
                scores[i, :n] = best_scores[0]
                ids[i, :n] = self._slot[found[best[0]]]
        return scores, ids
