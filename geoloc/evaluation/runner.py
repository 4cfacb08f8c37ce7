"""Run one model over one split: descriptors (cached), search, position estimate, outcomes.

Nothing here extracts, searches or estimates on its own: the database side is built by
``geoloc.indexing.run.index_photos``, query descriptors come from ``geoloc.descriptors.extract.Extractor``, the
search is ``geoloc.retrieval.search.SearchIndex`` and the estimate ``geoloc.locating.estimate.judge``,
so the figures measure exactly what ``geoloc index`` and ``geoloc locate`` do. What is specific
to evaluation is that the truth comes from the benchmark (not from EXIF), and that everything
expensive is cached. An existing database is evaluated by :mod:`geoloc.evaluation.existing`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from geoloc.errors import GeolocError, PhotoError, require, require_at_least
from geoloc.locating.estimate import ConfidenceConfig, EstimateConfig
from geoloc.evaluation.cache import (
    QueryDescriptorCache,
    eval_cache_dir,
    file_stamp,
    settings_key,
)
from geoloc.evaluation.split import Positions, Split
from geoloc.evaluation.metrics import (
    RECALL_NS,
    Retrieved,
    QueryOutcome,
    Summary,
    summarize,
)
from geoloc.geo import haversine_m, utm_to_latlon
from geoloc.models.runtime import check_precision_name
from geoloc.progress import Prefixed, Progress
from geoloc.formatting import count, json_number as _r

DEFAULT_THRESHOLD_M = 25.0
#: An IVF threshold no database reaches: evaluation always searches exhaustively.
EXACT_SEARCH = 2**62


def _default_verifier() -> str:
    from geoloc.retrieval.rerank import default_verifier

    return default_verifier()


@dataclass
class EvalConfig:
    """What to evaluate and how; the defaults are those of ``geoloc index`` / ``geoloc locate``."""

    model: str | None = None  # registry name or model file; None: the registry default
    threshold_m: float | None = None  # None: the dataset's own (posDistThr), else 25 m
    top_k: int = 10  # candidates per query kept in the per-query CSV/JSON
    max_side: int | None = None  # None: the model's default
    batch_size: int | None = None  # None: planned from the image size, the model and the memory
    workers: int | None = None
    device: str = "auto"
    precision: str = "auto"  # as geoloc index / locate: fp32 on the CPU, autocast on CUDA
    estimate_k: int = 10  # candidates the position estimate looks at (as in geoloc locate)
    recall_ns: tuple[int, ...] = RECALL_NS
    vocabulary_photos: int = 300
    rerank: bool = True  # as geoloc locate: verify and reorder the top candidates
    rerank_top: int = 20
    #: geoloc.retrieval.rerank.RerankConfig.verifier: by default its default_verifier().
    rerank_verifier: str = field(default_factory=_default_verifier)
    #: How the estimate groups candidates and when it is trusted: ``geoloc locate``'s own
    #: settings (``LocateConfig.estimate`` / ``.confidence``), so eval measures what locate does.
    estimate: EstimateConfig = field(default_factory=EstimateConfig)
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)
    #: Where the database side's descriptors are computed: "local" or "ray" (``geoloc index --engine``).
    engine: str = "local"
    #: Trips (``eval QUERIES --db DB --track/--clock/--evidence/--sequence``): a
    #: :class:`geoloc.trips.evidence.TripConfig`, applied to the answers as locate applies it;
    #: None: the pixels alone.
    trips: object = None
    ray: object = None  # geoloc.descriptors.cluster.RayConfig for engine "ray"; None: a local Ray

    def check(self) -> None:
        from geoloc.retrieval.rerank import RerankConfig

        require_at_least("--top-k", self.top_k, 1)
        RerankConfig(enabled=self.rerank, verifier=self.rerank_verifier).check()
        require(self.threshold_m is None or (self.threshold_m > 0 and math.isfinite(self.threshold_m)),
                f"--threshold-m must be a positive number of metres, got {self.threshold_m}")
        require_at_least("--max-side", self.max_side, 32, " pixels")
        require_at_least("--batch-size", self.batch_size, 1)
        require_at_least("--workers", self.workers, 1)
        require_at_least("--rerank-top", self.rerank_top, 1)
        check_precision_name(self.precision)

    @property
    def search_depth(self) -> int:
        return max(self.top_k, max(self.recall_ns), self.estimate_k, self.rerank_top if self.rerank else 0)


@dataclass
class EvalResult:
    """Everything one evaluation produced: the figures, the per-query outcomes, where they came from."""

    model: str
    dim: int
    dataset: str
    kind: str
    threshold_m: float
    summary: Summary
    outcomes: list[QueryOutcome]
    database_images: int
    descriptors: dict[str, int] = field(default_factory=dict)
    cache: Path | None = None
    problems: list[PhotoError] = field(default_factory=list)
    skipped_queries: int = 0  # queries without ground truth (no EXIF GPS)
    reranked: bool = False  # candidates reordered by geometric verification
    verifier: str | None = None  # which verifier did it (geoloc.retrieval.rerank.VERIFIERS)
    #: Search, verification and estimate per query, in seconds (queries' descriptors excluded:
    #: the eval cache keeps them; a learned verifier's query keypoints included).
    seconds_per_query: float | None = None

    def to_json(self, include_queries: bool = False, top_k: int = 10) -> dict:
        s = self.summary
        data = {
            "model": self.model,
            "queries": s.queries,
            "threshold_m": self.threshold_m,
            "recall": {str(n): _r(v, 4) for n, v in s.recall.items()},
            "median_error_m": _r(s.median_error_m, 2),
            "mean_error_m": _r(s.mean_error_m, 2),
            "p90_error_m": _r(s.p90_error_m, 2),
            "dim": self.dim,
            "dataset": {"name": self.dataset, "kind": self.kind, "database_images": self.database_images},
            "queries_without_positive": s.queries_without_positive,
            "queries_failed": s.failed,
            "queries_without_gps": self.skipped_queries,
            "rerank": self.reranked,
            "verifier": self.verifier,
            "seconds_per_query": _r(self.seconds_per_query, 4),
            "calibration": {level: {"queries": c["queries"], "within_radius": _r(c["within_radius"], 4),
                                    "median_radius_m": _r(c["median_radius_m"], 1)}
                            for level, c in s.calibration.items()},
            "descriptors": dict(self.descriptors),
            "cache": str(self.cache) if self.cache else None,
            "errors": [{"path": str(p.path), "reason": p.reason} for p in self.problems],
        }
        if include_queries:
            data["per_query"] = [_outcome_json(o, top_k) for o in self.outcomes]
        return data


def _outcome_json(o: QueryOutcome, top_k: int) -> dict:
    return {
        "query": o.query,
        "truth": None if o.true_lat is None else {"lat": _r(o.true_lat, 7), "lon": _r(o.true_lon, 7)},
        "estimate": None if o.estimate_lat is None else {"lat": _r(o.estimate_lat, 7), "lon": _r(o.estimate_lon, 7), "radius_m": _r(o.radius_m, 1)},
        "error_m": _r(o.error_m, 2),
        "confidence": o.confidence,
        "verification": o.verification,
        "candidates": [
            {"rank": c.rank, "path": c.path, "score": _r(c.score, 6), "truth_distance_m": _r(c.truth_distance_m, 2)}
            for c in o.candidates[:top_k]
        ],
        "error": o.error,
    }


def resolve_threshold(config: EvalConfig, split: Split | None = None) -> float:
    if config.threshold_m is not None:
        return float(config.threshold_m)
    if split is not None and split.threshold_m:
        return float(split.threshold_m)
    return DEFAULT_THRESHOLD_M


def resolved_precision(config: EvalConfig) -> str:
    """The precision this run's descriptors are computed at: part of the eval cache's key, as
    bf16 descriptors differ (slightly) from fp32 ones."""
    from geoloc.models.registry import pick_device
    from geoloc.models.runtime import resolve_precision

    return resolve_precision(config.precision, pick_device(config.device))


def model_spec(config: EvalConfig) -> str:
    from geoloc.descriptors.database_model import requested_model_key

    return requested_model_key(config.model)


# ---------------------------------------------------------------------------------------------
# a benchmark split: the database side is built into the cache


def evaluate_split(split: Split, config: EvalConfig, progress: Progress | None = None) -> EvalResult:
    """recall@N of one model on one split, with the database built (once) into the eval cache."""
    from geoloc.database import Database

    config.check()
    progress = progress or Progress()
    threshold = resolve_threshold(config, split)
    spec = model_spec(config)
    settings = {"max_side": config.max_side, "model_file": _file_key(spec)}
    precision = resolved_precision(config)
    if precision != "fp32":  # fp32 caches keep the key they had before precisions existed
        settings["precision"] = precision
    folder = eval_cache_dir(split.name, split.fingerprint(), settings_key(spec, None, settings))
    report = _build_database(split, folder / "database", spec, config, progress)
    problems = list(split.problems) + [PhotoError(p, r) for p, r in report.error_files]

    with Database.open(folder / "database") as database:
        manifest = dict(database.manifest)
        db_matrix, split_rows, db_records = _split_rows(database, split)
        state = (f"{manifest.get('weights_hash')}|{manifest.get('vocabulary_sha256')}|{manifest['preprocess']}|"
                 f"{manifest['dim']}|{manifest.get('maps')}")
        model_holder: dict = {}

        def compute(paths: list[Path]):
            return _extract_queries(database, paths, config, model_holder, progress)

        slot_bytes = database.maps.slot_bytes if database.maps else 0
        q_desc, q_slots, q_errors, qstats = QueryDescriptorCache(folder, state, slot_bytes).get_or_compute(
            split.query_paths, compute, int(manifest["dim"]))

        for i, reason in q_errors.items():
            problems.append(PhotoError(split.query_paths[i], reason))
        reranker = _reranker(database, db_records, q_slots, config, progress)
        start = time.perf_counter()
        outcomes = _search_and_score(split, split_rows, db_matrix, q_desc, q_errors, threshold, config,
                                     reranker, q_slots)
        spent = time.perf_counter() - start
    summary = summarize(outcomes, threshold, config.recall_ns, max_n=max(config.recall_ns + (config.top_k,)))
    return EvalResult(
        model=str(manifest["model"]),
        dim=int(manifest["dim"]),
        dataset=split.name,
        kind=split.kind,
        threshold_m=threshold,
        summary=summary,
        outcomes=outcomes,
        reranked=reranker is not None,
        verifier=config.rerank_verifier if reranker is not None else None,
        seconds_per_query=spent / max(len(outcomes), 1),
        database_images=len(split_rows),
        descriptors={
            "database_computed": report.indexed,
            "database_cached": report.unchanged,
            "queries_computed": qstats.computed,
            "queries_cached": qstats.cached,
        },
        cache=folder,
        problems=problems,
        skipped_queries=split.queries_without_gps,
    )


def _build_database(split: Split, db_dir: Path, spec: str, config: EvalConfig, progress: Progress):
    """The split's database side as a geoloc database in the cache: ``geoloc index`` itself,
    so later runs only index what changed."""
    from geoloc.indexing import refit
    from geoloc.indexing.run import IndexConfig, index_photos

    index_config = IndexConfig(model=spec, max_side=config.max_side, batch_size=config.batch_size,
                               workers=config.workers, device=config.device, precision=config.precision,
                               vocabulary_photos=config.vocabulary_photos, engine=config.engine,
                               ray=config.ray, vocabulary_advice=False)
    report = index_photos(split.db_paths, db_dir, index_config, progress=Prefixed(progress, "Database: "))
    if refit.is_provisional(report.vocabulary_photos, index_config):
        # index's own advice (`geoloc index --refit`) is for a user's database; this one is
        # eval's, fitted on every database image the split has: what it means is the figures'.
        progress.message(f"the vocabulary of this evaluation's database was fitted on only "
                         f"{count(report.vocabulary_photos, 'photo')} (a good one takes "
                         f"{min(index_config.provisional_vocabulary, index_config.vocabulary_photos)} or more): "
                         "the figures are those of a vocabulary this small")
    return report


def _split_rows(database, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """The descriptors of the split's database images, and each one's index in the split.

    The cache's database may hold images a changed split no longer lists; only the split's own
    take part (usually all of them: then the memory-mapped file is searched in place).
    """
    records, matrix = database.descriptor_matrix(located_only=False)
    index_of = {os.path.realpath(p): i for i, p in enumerate(split.db_paths)}
    keep_rows, split_rows = [], []
    for r, rec in enumerate(records):
        i = index_of.get(os.path.realpath(rec.path))
        if i is not None:
            keep_rows.append(r)
            split_rows.append(i)
    if not split_rows:
        raise GeolocError(f"{split.source}: none of the database images could be used")
    if len(keep_rows) != len(records):
        matrix = np.ascontiguousarray(matrix[np.asarray(keep_rows)], dtype=np.float32)
    return matrix, np.asarray(split_rows, dtype=np.int64), [records[r] for r in keep_rows]


def _reranker(database, records, q_slots, config: EvalConfig, progress: Progress):
    """The split's re-ranker, when asked for and possible (maps stored with the database)."""
    if not config.rerank:
        return None
    from geoloc.retrieval.rerank import VERIFIERS

    if VERIFIERS[config.rerank_verifier].dense and (database.maps is None or q_slots is None):
        progress.message(f"{database.where} stores no verification maps: evaluated without re-ranking")
        return None
    from geoloc.retrieval.rerank import RerankConfig, Reranker

    return Reranker(database, records, RerankConfig(enabled=True, top=config.rerank_top,
                                                    verifier=config.rerank_verifier, device=config.device))


def _file_key(spec: str) -> list | None:
    """A model file's size and mtime: a re-trained file gets a fresh cache, not stale descriptors."""
    p = Path(spec)
    if p.is_file():
        stamp = file_stamp(p)
        return list(stamp) if stamp else None
    return None


def _extract_queries(database, paths: list[Path], config: EvalConfig, holder: dict, progress: Progress):
    """Query descriptors with the database's own model, vocabulary and image size."""
    from geoloc.descriptors.database_model import load_database_model, query_extractor

    if "extractor" not in holder:
        holder["extractor"] = query_extractor(load_database_model(database, config.device), database,
                                              batch_size=config.batch_size, workers=config.workers,
                                              precision=config.precision)
    extractor = holder["extractor"]
    position = {os.fspath(p): i for i, p in enumerate(paths)}
    out = np.full((len(paths), database.dim), np.nan, dtype=np.float32)
    errors: dict[int, str] = {}
    progress.stage("Queries", len(paths))

    def failed(item) -> None:
        i = position.get(os.fspath(item.path))
        if i is not None:
            errors[i] = item.error.reason if item.error is not None else "unusable"
            progress.warning(item.path, errors[i])
        progress.advance(1)

    spec = database.maps
    slots = np.zeros((len(paths), spec.slot_bytes), dtype=np.uint8) if spec else None
    if spec:  # the queries' verification maps too, from the same pass, cached with them
        from geoloc.retrieval.verify import stored_map

        for items, desc, maps in extractor.descriptors_and_maps(paths, on_error=failed):
            for item, row, fmap in zip(items, desc, maps):
                i = position[os.fspath(item.path)]
                out[i] = row
                slots[i] = np.frombuffer(spec.encode(*stored_map(fmap.numpy(), spec.stride)), dtype=np.uint8)
            progress.advance(len(items))
    else:
        for items, desc in extractor.descriptors(paths, on_error=failed):
            for item, row in zip(items, desc):
                out[position[os.fspath(item.path)]] = row
            progress.advance(len(items))
    for i in range(len(paths)):
        if i not in errors and np.isnan(out[i]).any():
            errors[i] = "no descriptor could be computed"
    return out, errors, slots


def _estimator_positions(pos: Positions, ref: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, bool]:
    """lat/lon the estimator can work in, and whether they are real.

    A dbStruct without a known UTM zone has planar UTM only. The estimator works on lat/lon, and
    distances between points converted from UTM do not depend on the zone chosen (it only shifts
    longitude), so such points go through a stand-in zone around the equator: the estimate's
    error in metres is right, its coordinates mean nothing and are not reported.
    """
    if pos.has_latlon or pos.utm is None or ref is None:
        return pos.lat, pos.lon, True
    lat = np.empty(len(pos))
    lon = np.empty(len(pos))
    for i, (e, n) in enumerate(pos.utm):
        lat[i], lon[i] = utm_to_latlon(float(e - ref[0] + 500000.0), float(n - ref[1]), 31, True)
    return lat, lon, False


def _search_and_score(
    split: Split,
    split_rows: np.ndarray,
    db_matrix: np.ndarray,
    q_desc: np.ndarray,
    q_errors: dict[int, str],
    threshold: float,
    config: EvalConfig,
    reranker=None,
    q_slots: np.ndarray | None = None,
) -> list[QueryOutcome]:
    from geoloc.retrieval.search import SearchConfig, SearchIndex

    # Exact search always: published recall figures are exhaustive nearest neighbours.
    index = SearchIndex(db_matrix, SearchConfig(ivf_threshold=EXACT_SEARCH))
    ok = [i for i in range(len(split.query_paths)) if i not in q_errors]
    scores = ids = None
    if ok:
        scores, ids = index.search(q_desc[ok], config.search_depth)
    available = np.zeros(len(split.db_paths), dtype=bool)
    available[split_rows] = True
    positives = split.positives(threshold)

    ref = None
    if split.db.utm is not None:
        ref = np.median(np.concatenate([split.db.utm, split.queries.utm]), axis=0)
    db_lat, db_lon, real = _estimator_positions(split.db, ref)
    q_lat, q_lon, _ = _estimator_positions(split.queries, ref)
    reference = _Reference(index, db_matrix, db_lat[split_rows], db_lon[split_rows], config.confidence)
    judged = _judged(ok, ids, scores, db_lat[split_rows], db_lon[split_rows], reranker, q_slots,
                     split.query_paths, reference, config)

    outcomes: list[QueryOutcome] = []
    for qi, path in enumerate(split.query_paths):
        tl, tn = _opt(split.queries.lat[qi]), _opt(split.queries.lon[qi])
        o = QueryOutcome(str(path), tl, tn)
        if qi in q_errors:
            o.error = q_errors[qi]
            outcomes.append(o)
            continue
        answer = judged[qi]
        rows = split_rows[np.asarray(answer.rows, dtype=np.int64)]
        dists = split.distances_m(qi, rows)
        o.candidates = [
            Retrieved(k + 1, str(split.db_paths[j]), _opt(split.db.lat[j]), _opt(split.db.lon[j]), float(s), float(d))
            for k, (j, s, d) in enumerate(zip(rows, answer.scores, dists))
        ]
        o.has_positive = bool(available[positives[qi]].any())
        est = answer.estimate
        if est is not None:
            o.confidence, o.verification = est.confidence, est.verification
            o.radius_m = float(est.radius_m)
            o.error_m = float(haversine_m(est.lat, est.lon, q_lat[qi], q_lon[qi]))
            if real:
                o.estimate_lat, o.estimate_lon = float(est.lat), float(est.lon)
        outcomes.append(o)
    return outcomes


class _Reference:
    """The weak-match bar of queries judged without verification, as ``geoloc locate`` sets it:
    measured once, on the first query that needs it (the judging threads share it)."""

    def __init__(self, index, matrix, lats, lons, config: ConfidenceConfig):
        import threading

        self._args = (index, matrix, lats, lons, config)
        self._lock = threading.Lock()
        self._value: float | None = None
        self._done = False

    def __call__(self) -> float | None:
        from geoloc.locating.coverage import score_reference

        with self._lock:
            if not self._done:
                self._value, self._done = score_reference(*self._args), True
            return self._value


def _judged(ok, ids, scores, lats, lons, reranker, q_slots, query_paths, reference, config: EvalConfig) -> dict:
    """Per query: its candidates re-ranked and judged by :func:`geoloc.locating.judge.rank_and_judge`,
    as ``geoloc locate`` answers it.

    With a re-ranker, queries go through two threads (OpenCV's MAGSAC and numpy's matrix
    products release the GIL).
    """
    from concurrent.futures import ThreadPoolExecutor

    from geoloc.locating.judge import query_cells, rank_and_judge

    row_of = {q: r for r, q in enumerate(ok)}

    def one(qi: int):
        r = row_of[qi]
        valid = ids[r] >= 0
        cells = None
        if reranker is not None:
            maps = reranker.database.maps
            slot = maps.decode(bytes(q_slots[qi])) if q_slots is not None and maps is not None else None
            cells = query_cells(reranker, [Path(query_paths[qi])], slots=[slot],
                                stride=float(maps.stride) if maps is not None else 0.0)[0]
        return qi, rank_and_judge(ids[r][valid], scores[r][valid], lats, lons, cells=cells, reranker=reranker,
                                  reference=reference, estimate_k=config.estimate_k,
                                  estimate_config=config.estimate, confidence_config=config.confidence)

    with ThreadPoolExecutor(max_workers=2 if reranker is not None else 1) as pool:
        return dict(pool.map(one, ok))


def _opt(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def with_model(config: EvalConfig, model: str) -> EvalConfig:
    return replace(config, model=model)
