"""Where was this photo taken: nearest database photos, a position estimate and its uncertainty.

Taking the single most similar photo's position ("top-1") throws away what the other top
candidates say. Place-recognition errors are mostly isolated look-alikes, while the right place
tends to return several database photos that agree with each other in space. So the estimate is
the similarity-weighted centre of the largest spatially consistent group among the top
candidates, and the group's spread gives the uncertainty radius. The method, its parameters and
its measured accuracy are documented in ``docs/estimate.md``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from geoloc.errors import DatabaseError, GeolocError, UsageError
from geoloc.geo import from_local_m, haversine_m, to_local_m

# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass
class EstimateConfig:
    """How candidates are grouped and weighted; defaults measured on ``shared/data/lund``."""

    # Candidates closer than this to a group's centre agree on the place. 25 m is the usual
    # "same place" threshold of place-recognition benchmarks (Pitts30k, Tokyo 24/7).
    group_radius_m: float = 25.0
    # Weight of a candidate: exp((score - best score) / temperature). Small temperatures trust
    # the best match; large ones let a crowd of weaker matches outvote it.
    temperature: float = 0.05
    # The radius never goes below this: consumer GPS in the database photos is rarely better.
    min_radius_m: float = 10.0
    # radius = scale · weighted RMS distance of the group around the estimate (then the floor),
    # and a group of one photo gets ``single_radius_m`` since nothing backs it up.
    radius_scale: float = 2.0
    single_radius_m: float = 25.0
    # Mean-shift refinement steps of the group centre.
    max_iterations: int = 10


@dataclass
class ConfidenceConfig:
    """When an estimate is flagged: a weak best match, or candidates that disagree.

    Raw cosine scores mean nothing on their own: their scale depends on the model and, for
    ``lite0-vlad``, on the vocabulary fitted to each database (unrelated photos score 0.2 against
    one Lund database and 0.45 against another). So the bar is taken from the database itself:
    how similar its located photos are to their nearest neighbour. A query whose best match is
    weaker than ``reference_quantile`` of those is probably from a place the database does not
    cover. On ``shared/data/lund`` (odd frames indexed) this flags all 9 Arezzo photos and none
    of the 14 even Lund frames (docs/estimate.md).
    """

    reference_quantile: float = 0.10
    # Fewer located photos than this give no meaningful reference: no weak-match check.
    min_reference_photos: int = 5
    # Database photos searched to measure the reference (evenly spread over the rows).
    reference_sample: int = 200
    # Below this share of the candidates' weight, the winning group is contested.
    min_agreement: float = 0.5


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


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class Candidate:
    rank: int
    path: Path
    lat: float
    lon: float
    score: float
    distance_m: float | None = None

    def to_json(self) -> dict:
        return {
            "rank": self.rank,
            "path": _display(self.path),
            "lat": _round(self.lat, 7),
            "lon": _round(self.lon, 7),
            "score": _round(self.score, 6),
            "distance_m": _round(self.distance_m, 2),
        }


@dataclass
class Estimate:
    lat: float
    lon: float
    radius_m: float
    # How many candidates formed the group, and their share of the candidates' total weight:
    # a low share means the top candidates disagree about the place.
    support: int = 1
    agreement: float = 1.0
    considered: int = 1  # candidates the estimate looked at (not in the JSON)
    # "high", "medium" (the candidates disagree) or "low" (even the best match is weaker than
    # this database's photos are to their own neighbours): see ``assess_confidence``.
    confidence: str = "high"
    warnings: list[str] = field(default_factory=list)  # the reasons, in words (not in "estimate")

    def to_json(self) -> dict:
        return {
            "lat": _round(self.lat, 7),
            "lon": _round(self.lon, 7),
            "radius_m": _round(self.radius_m, 1),
            "support": self.support,
            "agreement": _round(self.agreement, 3),
            "confidence": self.confidence,
        }


@dataclass
class LocateResult:
    query: Path
    estimate: Estimate | None = None
    candidates: list[Candidate] = field(default_factory=list)
    query_gps: tuple[float, float] | None = None
    error: str | None = None

    @property
    def warnings(self) -> list[str]:
        """Why the estimate should not be trusted as it stands (empty when confident)."""
        return list(self.estimate.warnings) if self.estimate is not None else []

    @property
    def error_m(self) -> float | None:
        """The estimate's distance from the query's own GPS, when both exist."""
        if self.estimate is None or self.query_gps is None:
            return None
        return float(haversine_m(self.estimate.lat, self.estimate.lon, *self.query_gps))

    @property
    def top1_error_m(self) -> float | None:
        if not self.candidates or self.query_gps is None:
            return None
        c = self.candidates[0]
        return float(haversine_m(c.lat, c.lon, *self.query_gps))

    def to_json(self) -> dict:
        """The SPEC's object; ``estimate`` carries two extra fields (support, agreement)."""
        return {
            "query": _display(self.query),
            "estimate": self.estimate.to_json() if self.estimate else None,
            "candidates": [c.to_json() for c in self.candidates],
            "query_gps": (
                {"lat": _round(self.query_gps[0], 7), "lon": _round(self.query_gps[1], 7)}
                if self.query_gps
                else None
            ),
            "error_m": _round(self.error_m, 2),
            "error": self.error,
            "warnings": self.warnings,
        }


def _round(value: float | None, digits: int) -> float | None:
    if value is None:
        return None
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


# --------------------------------------------------------------------------------------------
# The estimator: pure numpy on candidate positions and scores
# --------------------------------------------------------------------------------------------


def estimate_position(
    lats: Sequence[float],
    lons: Sequence[float],
    scores: Sequence[float],
    config: EstimateConfig | None = None,
) -> Estimate | None:
    """Similarity-weighted centre of the strongest spatially consistent group of candidates.

    Every candidate seeds a group (the candidates within ``group_radius_m`` of it); the group
    with the largest total weight wins, its centre is refined by flat-kernel mean shift until
    membership stops changing, and the estimate is the weighted mean of the final members.
    With no agreement at all this falls back to the best-scoring candidate, i.e. top-1.
    """
    cfg = config or EstimateConfig()
    lats = np.asarray(lats, dtype=np.float64)
    lons = np.asarray(lons, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if not (lats.shape == lons.shape == scores.shape) or lats.ndim != 1:
        raise ValueError("lats, lons and scores must be 1-D arrays of one length")
    if lats.size == 0:
        return None

    best = int(np.argmax(scores))
    lat0, lon0 = float(lats[best]), float(lons[best])
    xy = to_local_m(lats, lons, lat0, lon0)  # metres around the best candidate
    temperature = max(float(cfg.temperature), 1e-6)
    weights = np.exp((scores - scores[best]) / temperature)
    total = float(weights.sum())

    radius = float(cfg.group_radius_m)
    dist = np.linalg.norm(xy[:, None, :] - xy[None, :, :], axis=-1)
    group_weight = (dist <= radius) @ weights
    # Ties go to the group seeded by the better-ranked candidate.
    order = np.lexsort((-scores, -np.round(group_weight, 12)))
    seed = int(order[0])

    members = dist[seed] <= radius
    centre = _weighted_mean(xy, weights, members)
    for _ in range(max(int(cfg.max_iterations), 0)):
        new_members = np.linalg.norm(xy - centre, axis=1) <= radius
        if not new_members.any():
            break
        if np.array_equal(new_members, members):
            break
        new_centre = _weighted_mean(xy, weights, new_members)
        # Mean shift can only be allowed to move to a group at least as strong.
        if weights[new_members].sum() + 1e-12 < weights[members].sum():
            break
        members, centre = new_members, new_centre

    member_w = weights[members]
    d2 = np.sum((xy[members] - centre) ** 2, axis=1)
    spread = math.sqrt(float(np.sum(member_w * d2) / member_w.sum()))
    support = int(members.sum())
    if support == 1:
        radius_m = max(cfg.single_radius_m, cfg.min_radius_m)
    else:
        radius_m = max(cfg.radius_scale * spread, cfg.min_radius_m)
    lat, lon = from_local_m(float(centre[0]), float(centre[1]), lat0, lon0)
    return Estimate(
        lat=lat,
        lon=lon,
        radius_m=float(radius_m),
        support=support,
        agreement=float(member_w.sum() / total) if total > 0 else 1.0,
        considered=int(lats.size),
    )


def assess_confidence(
    estimate: Estimate,
    best_score: float,
    reference: float | None,
    config: ConfidenceConfig | None = None,
) -> Estimate:
    """Set ``estimate.confidence`` and ``estimate.warnings``; returns the same estimate.

    ``low``: the best score is below ``reference`` (the database's typical nearest-neighbour
    score), so even the best candidate is a poor match. ``medium``: a decent match, but the
    winning group holds less than ``min_agreement`` of the candidates' weight, i.e. the top
    candidates point to different places. ``high`` otherwise.
    """
    cfg = config or ConfidenceConfig()
    warnings: list[str] = []
    level = "high"
    if reference is not None and best_score < reference:
        level = "low"
        warnings.append(
            f"weak match: best score {best_score:.3f} is below {reference:.3f}, what this "
            "database's own photos typically score against their nearest neighbour; the photo "
            "may be from a place the database does not cover"
        )
    if estimate.agreement < cfg.min_agreement and estimate.considered > 1:
        level = "low" if level == "low" else "medium"
        warnings.append(
            f"candidates disagree: the estimate's group of {estimate.support} holds "
            f"{estimate.agreement:.0%} of the candidates' weight; the others point elsewhere"
        )
    estimate.confidence = level
    estimate.warnings = warnings
    return estimate


def _weighted_mean(xy: np.ndarray, weights: np.ndarray, members: np.ndarray) -> np.ndarray:
    w = weights[members]
    return (xy[members] * w[:, None]).sum(axis=0) / w.sum()


# --------------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------------


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

        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ValueError(f"query descriptors have {q.shape[1]} dimensions, index has {self.dim}")
        k = max(1, min(int(k), self.size))
        # faiss spreads a search over queries: with fewer queries than threads the idle threads
        # only spin, and a single query on 2 busy cores took 16 ms instead of 0.2 ms.
        threads = faiss.omp_get_max_threads()
        use = max(1, min(threads, len(q)))
        if use != threads:
            faiss.omp_set_num_threads(use)
        try:
            if self._index is not None:
                return self._index.search(q, k)
            return faiss.knn(q, self._matrix, k, metric=faiss.METRIC_INNER_PRODUCT)
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
    """Best effort: a cache that cannot be written only costs the next run a rebuild."""
    import faiss

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        faiss.write_index(index, str(tmp))
        os.replace(tmp, path)
        key_tmp = path.with_name(f".{path.name}.key.{os.getpid()}.tmp")
        key_tmp.write_text(key + "\n")
        os.replace(key_tmp, Path(str(path) + ".key"))
    except Exception:
        pass


# --------------------------------------------------------------------------------------------
# Locating photos against a database
# --------------------------------------------------------------------------------------------


@dataclass
class LocateConfig:
    top_k: int = 10
    # The estimate looks at this many candidates whatever ``top_k`` shows, so that asking for
    # fewer candidates on screen does not make the estimate worse.
    estimate_k: int = 10
    batch_size: int = 8
    workers: int | None = None
    device: str = "auto"
    estimate: EstimateConfig = field(default_factory=EstimateConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)


@dataclass
class LocateTimings:
    """Where a run's time went (seconds), for ``--verbose`` output and the benchmark."""

    open_s: float = 0.0  # database read
    index_s: float = 0.0  # search index: built, read from the cache, or (exact) nothing to do
    model_load_s: float = 0.0
    descriptor_s: float = 0.0  # decoding + network, all queries
    search_s: float = 0.0
    estimate_s: float = 0.0
    queries: int = 0
    extracted: int = 0  # queries that went through the network (others reused stored rows)


class Locator:
    """A database opened for locating: its located photos in a search index, its model on demand.

    The model is loaded only when a query is not already in the database (or changed since it
    was indexed): ``--unlocated`` and re-queried database photos reuse their stored descriptors,
    which the database's own model computed with its own preprocessing.
    """

    def __init__(self, db: Path | str, config: LocateConfig | None = None):
        from geoloc.database import Database

        self.config = config or LocateConfig()
        _check_config(self.config)
        self.timings = LocateTimings()
        start = _now()
        self.database = Database.open(Path(db))
        try:
            self.records, matrix = self.database.descriptor_matrix(located_only=True)
            if not self.records:
                counts = self.database.counts()
                if counts["total"] == 0:
                    raise DatabaseError(
                        f"database {_display(self.database.path)} is empty; "
                        "add GPS-tagged photos with `geoloc index PATH`"
                    )
                raise DatabaseError(
                    f"database {_display(self.database.path)} has no photo with a GPS position "
                    f"({counts['total']} photos, none located); index GPS-tagged photos first"
                )
            self._matrix = matrix
            self.index: SearchIndex | None = None  # built on the first search (its size known)
        except BaseException:
            self.database.close()
            raise
        self._row_of_path = {os.fspath(r.path): i for i, r in enumerate(self.records)}
        self._lats = np.array([r.lat for r in self.records], dtype=np.float64)
        self._lons = np.array([r.lon for r in self.records], dtype=np.float64)
        self._model = None
        self._extractor = None
        self._reference: float | None = None
        self._reference_done = False
        self.timings.open_s = _now() - start

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        self.database.close()

    def __enter__(self) -> "Locator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- model ------------------------------------------------------------------------------

    @property
    def model(self):
        if self._model is None:
            start = _now()
            self._model = load_database_model(self.database, self.config.device)
            self.timings.model_load_s += _now() - start
        return self._model

    def _extractor_for_queries(self):
        if self._extractor is None:
            from geoloc.extract import ExtractConfig, Extractor, default_workers, model_device

            model = self.model
            cfg = ExtractConfig(
                max_side=int(self.database.manifest["preprocess"]["max_side"]),
                batch_size=self.config.batch_size,
                workers=self.config.workers or min(4, default_workers()),
                hash_files=False,
            )
            self._extractor = Extractor(model, cfg, device=model_device(model))
        return self._extractor

    # -- queries ----------------------------------------------------------------------------

    def unlocated_photos(self) -> list[Path]:
        """The database's photos without a GPS position of their own (``--unlocated``)."""
        return [r.path for r in self.database.photos() if not r.located]

    def locate(
        self,
        queries: Sequence[Path | str],
        on_progress: Callable[[int], None] | None = None,
    ) -> list[LocateResult]:
        """One result per query, in order; an unusable query gets ``error`` set, never raises."""
        advance = on_progress or (lambda n: None)
        queries = [Path(q) for q in queries]
        results = [LocateResult(query=q) for q in queries]
        self.timings.queries += len(queries)
        descriptors: list[np.ndarray | None] = [None] * len(queries)
        self_rows: list[int | None] = [None] * len(queries)

        # Queries the database already holds, unchanged: reuse their descriptors.
        to_extract: dict[str, list[int]] = {}
        stored: list[tuple[int, object]] = []
        for i, q in enumerate(queries):
            key = _resolved(q)
            self_rows[i] = self._row_of_path.get(key)
            record = self.database.get(Path(key))
            if record is not None and _unchanged(record):
                stored.append((i, record))
                if record.located:
                    results[i].query_gps = (float(record.lat), float(record.lon))
            else:
                to_extract.setdefault(key, []).append(i)
        if stored:
            rows = self.database.descriptors_for([rec for _, rec in stored])
            for (i, _), row in zip(stored, rows):
                descriptors[i] = np.asarray(row, dtype=np.float32)

        if to_extract:
            extractor = self._extractor_for_queries()  # loads the model (timed on its own)
            start = _now()
            paths = [Path(k) for k in to_extract]

            def failed(item) -> None:
                slots = to_extract.get(os.fspath(item.path), [])
                for i in slots:
                    results[i].error = str(item.error) if item.error else f"{queries[i]}: unusable"
                advance(len(slots))

            for items, out in extractor.descriptors(paths, on_error=failed):
                self._check_dim(out)
                for item, row in zip(items, out):
                    slots = to_extract.get(os.fspath(item.path), [])
                    for i in slots:
                        descriptors[i] = row
                        meta = item.meta
                        if meta is not None and getattr(meta, "located", False):
                            results[i].query_gps = (float(meta.lat), float(meta.lon))
                    advance(len(slots))
            self.timings.descriptor_s += _now() - start
            self.timings.extracted += len(paths)
        if stored:
            advance(len(stored))

        # Error messages name the file as the user gave it.
        for i, q in enumerate(queries):
            if results[i].error is not None and descriptors[i] is None:
                results[i].error = _rename_error(results[i].error, q)
            elif descriptors[i] is None and results[i].error is None:
                results[i].error = f"{_display(q)}: no descriptor could be computed"

        ok = [i for i, d in enumerate(descriptors) if d is not None]
        if ok:
            answers = self.search_and_estimate(
                np.stack([descriptors[i] for i in ok]), [self_rows[i] for i in ok]
            )
            for i, (estimate, candidates) in zip(ok, answers):
                results[i].estimate = estimate
                results[i].candidates = candidates
        return results

    def search_and_estimate(
        self, descriptors: np.ndarray, exclude_rows: Sequence[int | None] | None = None
    ) -> list[tuple[Estimate | None, list[Candidate]]]:
        """Top-k candidates and the estimate for each descriptor (rows of a Q×D matrix).

        ``exclude_rows[i]`` is the row of the query itself when it is in the database: a photo
        is never its own candidate.
        """
        cfg = self.config
        exclude_rows = list(exclude_rows) if exclude_rows is not None else [None] * len(descriptors)
        want = max(cfg.top_k, cfg.estimate_k)
        index = self._index_for(len(descriptors))
        start = _now()
        scores, ids = index.search(descriptors, want + 1)
        self.timings.search_s += _now() - start

        reference = self.score_reference()
        start = _now()
        answers = []
        for q in range(len(descriptors)):
            keep = [
                (int(j), float(s))
                for j, s in zip(ids[q], scores[q])
                if j >= 0 and int(j) != exclude_rows[q]
            ][:want]
            if not keep:
                answers.append((None, []))
                continue
            rows = np.array([j for j, _ in keep])
            sims = np.array([s for _, s in keep])
            n_est = min(cfg.estimate_k, len(keep)) if cfg.estimate_k > 0 else 1
            estimate = estimate_position(
                self._lats[rows[:n_est]], self._lons[rows[:n_est]], sims[:n_est], cfg.estimate
            )
            assess_confidence(estimate, float(sims[0]), reference, cfg.confidence)
            candidates = []
            for rank, (j, s) in enumerate(keep[: cfg.top_k], start=1):
                lat, lon = float(self._lats[j]), float(self._lons[j])
                distance = (
                    float(haversine_m(lat, lon, estimate.lat, estimate.lon)) if estimate else None
                )
                candidates.append(Candidate(rank, self.records[j].path, lat, lon, s, distance))
            answers.append((estimate, candidates))
        self.timings.estimate_s += _now() - start
        return answers

    def score_reference(self) -> float | None:
        """The database's typical nearest-neighbour score (see ``ConfidenceConfig``), or None.

        Measured once per Locator on an even sample of the located photos, each searched
        against all the others with the same index as the queries. The sample shrinks for
        very large exact databases so that this costs about as much as a few queries.
        """
        if self._reference_done:
            return self._reference
        self._reference_done = True
        cfg = self.config.confidence
        n = len(self.records)
        if n < max(2, cfg.min_reference_photos):
            return None
        start = _now()
        budget = max(20, int(4e9 // max(1, n * self.database.dim)))
        sample = min(n, cfg.reference_sample, budget)
        rows = np.unique(np.linspace(0, n - 1, sample).round().astype(np.int64))
        index = self._index_for(len(rows))
        queries = np.ascontiguousarray(self._matrix[rows], dtype=np.float32)
        scores, ids = index.search(queries, 2)
        best = [
            float(next((s for j, s in zip(ids[i], scores[i]) if j >= 0 and j != row), np.nan))
            for i, row in enumerate(rows)
        ]
        best = np.array([b for b in best if math.isfinite(b)])
        if best.size >= cfg.min_reference_photos:
            self._reference = float(np.quantile(best, cfg.reference_quantile))
        self.timings.search_s += _now() - start
        return self._reference

    def _index_for(self, n_queries: int) -> SearchIndex:
        """The search index, built on first use; an IVF index once the batches justify one."""
        if self.index is None or self.index.ivf_deferred:
            start = _now()
            cache, key = _index_cache(self.database, self.records, self.config.search)
            self.index = SearchIndex(
                self._matrix, self.config.search, cache=cache, cache_key=key, n_queries=n_queries
            )
            self.timings.index_s += _now() - start
        return self.index

    def _check_dim(self, out: np.ndarray) -> None:
        if out.shape[1] != self.database.dim:
            raise DatabaseError(
                f"database {_display(self.database.path)} holds {self.database.dim}-dimensional "
                f"descriptors but its model {self.database.manifest.get('model')} now gives "
                f"{out.shape[1]}; the model changed since the database was built"
            )


def locate(
    db: Path | str,
    queries: Sequence[Path | str],
    top_k: int = 10,
    *,
    config: LocateConfig | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> list[LocateResult]:
    """Locate photos against the database at ``db`` (see :class:`Locator` to reuse one)."""
    import dataclasses

    cfg = dataclasses.replace(config or LocateConfig(), top_k=top_k)
    with Locator(db, cfg) as locator:
        return locator.locate(queries, on_progress=on_progress)


def load_database_model(database, device: str = "auto"):
    """The database's own model with its vocabulary and max_side, checked against the manifest.

    A model whose weights changed since the database was built (a model file overwritten by a
    new ``geoloc finetune``, another converter version) would give descriptors that do not
    compare with the stored ones: that is an error, never a silent bad answer.
    """
    from geoloc.indexer import model_for_database
    from geoloc.models.registry import pick_device

    manifest = database.manifest
    model = model_for_database(database, device=str(pick_device(device)))
    expected = manifest.get("model_weights_hash")
    actual = getattr(model, "weights_hash", None)
    if expected and actual and expected != actual:
        raise DatabaseError(
            f"database {_display(database.path)} was built with model {manifest.get('model')} "
            f"whose weights have changed since ({expected[:12]} → {actual[:12]}); "
            "re-index into a new --db with the current model"
        )
    vocab = manifest.get("vocabulary_sha256")
    if vocab and hasattr(model, "vocabulary_hash"):
        try:
            have = model.vocabulary_hash()
        except GeolocError:
            have = None
        if have and have != vocab:
            raise DatabaseError(
                f"database {_display(database.path)}: its vocabulary file does not match its "
                "manifest (the folder was modified by hand?); re-index into a new --db"
            )
    if int(getattr(model, "dim", database.dim)) != database.dim:
        raise DatabaseError(
            f"database {_display(database.path)} holds {database.dim}-dimensional descriptors "
            f"but model {manifest.get('model')} gives {model.dim}"
        )
    return model


def _index_cache(database, records, search: SearchConfig) -> tuple[Path, str]:
    """Where the database's IVF index is cached, and the key that says it is still current.

    One file per database (named after its folder), so caches do not pile up. The key covers
    everything the index depends on: the folder, the model, the settings, and the row numbers
    of the located descriptors. A row's content never changes while it is referenced; a
    compaction renumbers rows, and then the list of located rows differs too (every row after
    a removed one moves down).
    """
    import hashlib

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


def _check_config(cfg: LocateConfig) -> None:
    if cfg.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {cfg.top_k}")
    if cfg.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    if cfg.workers is not None and cfg.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {cfg.workers}")


def _unchanged(record) -> bool:
    """The file is still the one indexed (or gone: the stored descriptor is all there is)."""
    try:
        st = os.stat(record.path)
    except OSError:  # gone or unreadable
        return True
    return st.st_size == record.size and st.st_mtime_ns == record.mtime_ns


def _resolved(path: Path) -> str:
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return os.path.abspath(path)


def _rename_error(message: str, query: Path) -> str:
    """Decoding errors name the resolved file; say it as the user typed it."""
    resolved = _resolved(query)
    if message.startswith(resolved + ":") and os.fspath(query) != resolved:
        return _display(query) + message[len(resolved):]
    return message


def _display(path) -> str:
    from geoloc.database import display_path

    return display_path(path)


def _now() -> float:
    import time

    return time.perf_counter()
