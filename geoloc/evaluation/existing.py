"""Evaluating an existing database: ``geoloc eval QUERIES --db DB``, the SPEC's form.

The database is searched with its own model, exactly as ``geoloc locate`` searches it (the
Locator itself runs the queries), and the answers are scored against the queries' own GPS.
Building a database from a benchmark's images first is :mod:`geoloc.evaluation.runner`'s.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from geoloc.errors import GeolocError, PhotoError, UsageError
from geoloc.evaluation.datasets import QUERY_WITHOUT_GPS, photos_with_gps
from geoloc.evaluation.metrics import QueryOutcome, Retrieved, summarize
from geoloc.evaluation.runner import EXACT_SEARCH, EvalConfig, EvalResult, model_spec, resolve_threshold
from geoloc.evaluation.split import Positions, Split
from geoloc.formatting import count
from geoloc.geo import haversine_m
from geoloc.progress import Progress


def evaluate_database(
    db: Path,
    queries: Sequence[Path | str],
    config: EvalConfig,
    progress: Progress | None = None,
) -> EvalResult:
    """recall@N of an existing database (its own model) on query photos whose EXIF has GPS."""
    from geoloc.locating.locator import LocateConfig, Locator
    from geoloc.retrieval.rerank import RerankConfig
    from geoloc.retrieval.search import SearchConfig

    config.check()
    progress = progress or Progress()
    threshold = resolve_threshold(config)
    problems: list[PhotoError] = []
    q_paths, q_pos, skipped = photos_with_gps(queries, problems, without_gps=QUERY_WITHOUT_GPS)
    if not q_paths:
        raise GeolocError(
            "none of the query photos carries a GPS position to score against"
            + (f" ({count(skipped, 'photo')} without GPS)" if skipped else "")
        )
    cfg = LocateConfig(
        top_k=config.search_depth,
        estimate_k=config.estimate_k,
        batch_size=config.batch_size,
        workers=config.workers,
        device=config.device,
        precision=config.precision,
        estimate=config.estimate,
        confidence=config.confidence,
        search=SearchConfig(ivf_threshold=EXACT_SEARCH),  # exact, as published figures are
        rerank=RerankConfig(enabled=config.rerank, top=config.rerank_top, verifier=config.rerank_verifier),
    )
    with Locator(Path(db), cfg) as locator:
        manifest = locator.database.manifest
        _check_database_matches(db, manifest, config)
        progress.stage("Queries", len(q_paths))
        import time

        start = time.perf_counter()
        results = locator.locate(q_paths, on_progress=progress.advance)
        spent = time.perf_counter() - start
        if config.trips is not None:
            from dataclasses import replace

            from geoloc.trips.evidence import apply_to_database

            # The queries' own GPS time stamps are ground truth: never clock evidence here.
            from geoloc import console

            apply_to_database(results, Path(db), replace(config.trips, query_gps_times=False), warn=console.warn)
        records = locator.records
        extracted = locator.timings.extracted
        dim = int(locator.database.dim)

    db_paths = [Path(r.path) for r in records]
    db_pos = Positions(
        np.array([r.lat for r in records], dtype=np.float64), np.array([r.lon for r in records], dtype=np.float64)
    )
    split = Split("database", "exif", str(db), db_paths, db_pos, q_paths, q_pos)
    outcomes = _outcomes_of(split, results, threshold, problems)
    summary = summarize(outcomes, threshold, config.recall_ns, max_n=max(config.recall_ns + (config.top_k,)))
    return EvalResult(
        model=str(manifest["model"]),
        dim=dim,
        dataset=str(db),
        kind="database",
        threshold_m=threshold,
        summary=summary,
        outcomes=outcomes,
        reranked=config.rerank,
        verifier=config.rerank_verifier if config.rerank else None,
        seconds_per_query=spent / max(len(q_paths), 1),
        database_images=len(records),
        descriptors={"queries_computed": extracted, "queries_cached": len(q_paths) - extracted},
        cache=None,
        problems=problems,
        skipped_queries=skipped,
    )


def _check_database_matches(db: Path, manifest: dict, config: EvalConfig) -> None:
    """An existing database is evaluated with its own model and size, never another's."""
    if config.model is not None and model_spec(config) != manifest["model"]:
        raise UsageError(
            f"database {db} was built with model {manifest['model']}; to evaluate "
            f"{config.model}, give the database images (--db-images) or a --dataset instead of --db"
        )
    if config.max_side is not None and int(manifest["preprocess"]["max_side"]) != config.max_side:
        raise UsageError(
            f"database {db} was built with --max-side {manifest['preprocess']['max_side']}; "
            "--max-side cannot change it"
        )


def _outcomes_of(split: Split, results, threshold: float, problems: list[PhotoError]) -> list[QueryOutcome]:
    """``geoloc locate``'s answers scored against the queries' own GPS (their EXIF)."""
    positives = split.positives(threshold)
    self_row = {os.path.realpath(p): i for i, p in enumerate(split.db_paths)}
    outcomes = []
    for qi, res in enumerate(results):
        tl, tn = float(split.queries.lat[qi]), float(split.queries.lon[qi])
        o = QueryOutcome(str(split.query_paths[qi]), tl, tn)
        if res.error is not None or not res.candidates:
            o.error = res.error or "no candidates"
            problems.append(PhotoError(split.query_paths[qi], o.error))
            outcomes.append(o)
            continue
        o.candidates = [
            Retrieved(c.rank, str(c.path), c.lat, c.lon, float(c.score), float(haversine_m(c.lat, c.lon, tl, tn)))
            for c in res.candidates
        ]
        me = self_row.get(os.path.realpath(split.query_paths[qi]))
        o.has_positive = any(int(j) != me for j in positives[qi])
        if res.estimate is not None:
            o.estimate_lat, o.estimate_lon = float(res.estimate.lat), float(res.estimate.lon)
            o.radius_m = float(res.estimate.radius_m)
            o.confidence, o.verification = res.estimate.confidence, res.estimate.verification
            o.error_m = float(haversine_m(o.estimate_lat, o.estimate_lon, tl, tn))
        outcomes.append(o)
    return outcomes
