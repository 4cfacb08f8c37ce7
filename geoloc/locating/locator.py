"""Where was this photo taken: the Locator ties a database, its model, search and the estimate.

Each step has a module of its own: :mod:`geoloc.retrieval.search` finds the nearest database photos,
:mod:`geoloc.locating.estimate` turns the candidates into a position, a radius and a confidence, and
:mod:`geoloc.descriptors.database_model` supplies the network that made the database's descriptors. What
lives here is the order of the steps for a batch of queries; the results they produce are
:mod:`geoloc.locating.results`' (``Candidate`` and ``LocateResult`` are importable from here too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from geoloc.retrieval.compressed import CompressedSearch, LocatedRows
from geoloc.database.layout import VERIFY_ALL_BYTES
from geoloc.errors import DatabaseError, NoLocatedPhotosError, require_at_least
from geoloc.locating.estimate import ConfidenceConfig, Estimate, EstimateConfig
from geoloc.files import display_path
from geoloc.formatting import count
from geoloc.geo import haversine_m
from geoloc.locating.judge import query_cells, rank_and_judge
from geoloc.models.runtime import check_precision_name
from geoloc.retrieval.rerank import RerankConfig, Reranker
from geoloc.locating.results import Candidate, LocateResult
from geoloc.retrieval.search import SearchConfig, SearchIndex, index_cache

# --------------------------------------------------------------------------------------------
# Locating photos against a database
# --------------------------------------------------------------------------------------------


@dataclass
class LocateConfig:
    top_k: int = 10
    # The estimate looks at this many candidates whatever ``top_k`` shows, so that asking for
    # fewer candidates on screen does not make the estimate worse.
    estimate_k: int = 10
    #: Query photos per network batch; None: planned from the image size, the model and the
    #: memory (:func:`geoloc.models.runtime.plan_batch`).
    batch_size: int | None = None
    #: Decoding threads for query photos; None: ``extract.default_workers`` for the device.
    workers: int | None = None
    device: str = "auto"
    #: ``auto`` (fp32 on the CPU, autocast on CUDA), ``fp32``, ``bf16`` or ``fp16``; need not
    #: be the database's (:func:`geoloc.descriptors.database_model.record_precision`).
    precision: str = "auto"
    estimate: EstimateConfig = field(default_factory=EstimateConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)

    def check(self) -> None:
        require_at_least("--top-k", self.top_k, 1)
        require_at_least("--rerank-top", self.rerank.top, 1)
        require_at_least("--batch-size", self.batch_size, 1)
        require_at_least("--workers", self.workers, 1)
        self.rerank.check()
        check_precision_name(self.precision)


@dataclass
class LocateTimings:
    """Where a run's time went (seconds), for the benchmark (``benchmarks/bench_locate.py``)."""

    open_s: float = 0.0  # database read
    index_s: float = 0.0  # search index: built, read from the cache, or (exact) nothing to do
    model_load_s: float = 0.0
    descriptor_s: float = 0.0  # decoding + network, all queries
    search_s: float = 0.0
    rerank_s: float = 0.0  # geometric verification, inside estimate_s
    estimate_s: float = 0.0
    queries: int = 0
    extracted: int = 0  # queries that went through the network (others reused stored rows)


@dataclass
class _Batch:
    """One ``Locator.locate`` call in progress: a result and a descriptor slot per query."""

    queries: list[Path]
    results: list[LocateResult]
    descriptors: list[np.ndarray | None]
    self_rows: list[int | None]  # the query's own row among the located photos, if it is one
    cells: list  # the query's verification cells (geoloc.retrieval.verify.Cells), when re-ranking

    @classmethod
    def of(cls, queries: Sequence[Path | str]) -> _Batch:
        paths = [Path(q) for q in queries]
        n = len(paths)
        return cls(paths, [LocateResult(query=q) for q in paths], [None] * n, [None] * n, [None] * n)


class Locator:
    """A database opened for locating: its located photos in a search index, its model on demand.

    The model is loaded only when a query is not already in the database (or changed since it
    was indexed): ``--unlocated`` and re-queried database photos reuse their stored descriptors,
    which the database's own model computed with its own preprocessing.
    """

    def __init__(self, db: Path | str, config: LocateConfig | None = None):
        from geoloc.database import Database

        self.config = config or LocateConfig()
        self.config.check()
        self.timings = LocateTimings()
        start = _now()
        self.database = Database.open(Path(db))
        try:
            # A compressed search reads the store's rows where they are; the others search a
            # matrix of the located rows (a view of the file when those are contiguous).
            self.compressed = self.config.search.use_compressed(self.database.counts()["located"])
            if self.compressed:
                self.records, self._file = self.database.descriptor_file(located_only=True)
                self._rows = np.fromiter((r.row for r in self.records), dtype=np.int64, count=len(self.records))
                self._matrix = None
            else:
                self.records, self._matrix = self.database.descriptor_matrix(located_only=True)
            if not self.records:
                raise self._nothing_located()
            # Every stored descriptor is checked against its checksum before it is trusted: all
            # of them now when they fit the budget, else each candidate as a search returns it.
            self._verified_all = len(self.records) * self.database.dim * 4 <= VERIFY_ALL_BYTES
            problems = self.database.verify(self.records) if self._verified_all else []
            if problems:
                raise self.database.damage(problems)
        except BaseException:
            self.database.close()
            raise
        self.index: SearchIndex | CompressedSearch | None = None  # built on the first search (its size known)
        self._row_of_path = {os.fspath(r.path): i for i, r in enumerate(self.records)}
        self._lats = np.array([r.lat for r in self.records], dtype=np.float64)
        self._lons = np.array([r.lon for r in self.records], dtype=np.float64)
        self._model = None
        self._extractor = None
        self._reranker: Reranker | None = None
        self._reference: float | None = None
        self._reference_done = False
        self.timings.open_s = _now() - start

    def _nothing_located(self) -> DatabaseError:
        where = f"database {display_path(self.database.path)}"
        counts = self.database.counts()
        writer = self.database.writer()
        if writer:  # a first `geoloc index` still at work: not empty, not yet ready
            done = f"{count(counts['total'], 'photo')} so far, none located yet" if counts["total"] else "no photo stored yet"
            return DatabaseError(
                f"{where} is being built by another geoloc process ({writer}): {done}; "
                "run `geoloc locate` again when that `geoloc index` has finished")
        if counts["total"] == 0:
            return DatabaseError(f"{where} is empty; add GPS-tagged photos with `geoloc index PATH`")
        return NoLocatedPhotosError(
            f"{where} has no photo with a GPS position ({count(counts['total'], 'photo')}, none located); "
            "index GPS-tagged photos first, or give a GPS track (--track, `geoloc index --track`) to place "
            "its photos by time"
        )

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
            from geoloc.descriptors.database_model import load_database_model

            start = _now()
            self._model = load_database_model(self.database, self.config.device)
            self.timings.model_load_s += _now() - start
        return self._model

    def _query_extractor(self):
        if self._extractor is None:
            from geoloc.descriptors.database_model import query_extractor

            self._extractor = query_extractor(self.model, self.database, batch_size=self.config.batch_size,
                                              workers=self.config.workers, precision=self.config.precision)
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
        batch = _Batch.of(queries)
        self.timings.queries += len(batch.queries)
        to_extract = self._reuse_stored(batch, advance)
        if to_extract:
            self._extract(batch, to_extract, advance)
        self._name_failures(batch)
        ok = [i for i, d in enumerate(batch.descriptors) if d is not None]
        if ok:
            notes: list[list[str]] = [[] for _ in ok]
            answers = self.search_and_estimate(
                np.stack([batch.descriptors[i] for i in ok]), [batch.self_rows[i] for i in ok],
                cells=[batch.cells[i] for i in ok], notes=notes,
            )
            for i, (estimate, candidates), note in zip(ok, answers, notes):
                batch.results[i].estimate = estimate
                batch.results[i].candidates = candidates
                batch.results[i].notes = note
        return batch.results

    def _reuse_stored(self, batch: _Batch, advance: Callable[[int], None]) -> dict[str, list[int]]:
        """Queries the database already holds, unchanged, keep their stored descriptors; the
        rest come back as ``{resolved path: [positions in the batch]}`` for the network."""
        to_extract: dict[str, list[int]] = {}
        stored: list[tuple[int, object]] = []
        for i, q in enumerate(batch.queries):
            key = _resolved(q)
            batch.self_rows[i] = self._row_of_path.get(key)
            record = self.database.get(Path(key))
            if record is not None and _unchanged(record):
                stored.append((i, record))
                batch.results[i].take_time(record)
                if record.located:
                    batch.results[i].query_gps = (float(record.lat), float(record.lon))
            else:
                to_extract.setdefault(key, []).append(i)
        if stored:
            self._check_rows([rec for _, rec in stored])
            rows = self.database.descriptors_for([rec for _, rec in stored])
            for (i, _), row in zip(stored, rows):
                batch.descriptors[i] = np.asarray(row, dtype=np.float32)
            if self.config.rerank.enabled:
                self._stored_cells(batch, stored)
            advance(len(stored))
        return to_extract

    def _stored_cells(self, batch: _Batch, stored: list) -> None:
        """A database photo queried again verifies with its stored map (computed from its file
        for a database that stores none)."""
        paths = [Path(rec.path) for _, rec in stored]
        dense = self.config.rerank.spec.dense
        if dense and self.database.maps is None:
            found = self._compute_cells(paths)
        elif dense:
            found = query_cells(self.reranker, paths, slots=self.database.map_slots([rec.row for _, rec in stored]),
                                stride=float(self.database.maps.stride))
        else:
            found = query_cells(self.reranker, paths)
        for (i, _), cells in zip(stored, found):
            batch.cells[i] = cells

    def _extract(self, batch: _Batch, to_extract: dict[str, list[int]], advance: Callable[[int], None]) -> None:
        """Descriptors (and EXIF positions) of the queries the database does not hold."""
        extractor = self._query_extractor()  # loads the model (timed on its own)
        start = _now()

        def failed(item) -> None:
            slots = to_extract.get(os.fspath(item.path), [])
            for i in slots:
                batch.results[i].error = str(item.error) if item.error else f"{batch.queries[i]}: unusable"
            advance(len(slots))

        paths = [Path(k) for k in to_extract]
        for items, out, cells in self._describe(extractor, paths, failed):
            self._check_dim(out)
            for item, row, one in zip(items, out, cells):
                slots = to_extract.get(os.fspath(item.path), [])
                for i in slots:
                    batch.descriptors[i] = row
                    batch.cells[i] = one
                    meta = item.meta
                    batch.results[i].take_time(meta)
                    if meta is not None and getattr(meta, "located", False):
                        batch.results[i].query_gps = (float(meta.lat), float(meta.lon))
                advance(len(slots))
        self.timings.descriptor_s += _now() - start
        self.timings.extracted += len(to_extract)

    def _describe(self, extractor, paths: list[Path], on_error):
        """Descriptors, and when re-ranking each photo's verification cells, batch by batch."""
        if not self.config.rerank.enabled:
            for items, out in extractor.descriptors(paths, on_error=on_error):
                yield items, out, [None] * len(items)
        elif not self.config.rerank.spec.dense:  # keypoints from the files
            for items, out in extractor.descriptors(paths, on_error=on_error):
                yield items, out, query_cells(self.reranker, [item.path for item in items])
        else:
            stride = float(self.model.map_geometry()[0])
            for items, out, maps in extractor.descriptors_and_maps(paths, on_error=on_error):
                yield items, out, query_cells(self.reranker, [item.path for item in items],
                                              maps=[m.numpy() for m in maps], stride=stride)

    def _compute_cells(self, paths: list[Path]) -> list:
        """Verification cells straight from photo files (a database that stores no maps)."""
        found: dict[str, object] = {}
        for items, _, cells in self._describe(self._query_extractor(), paths, lambda item: None):
            for item, one in zip(items, cells):
                found[os.fspath(item.path)] = one
        return [found.get(os.fspath(p)) for p in paths]

    @property
    def reranker(self) -> Reranker:
        if self._reranker is None:
            self._reranker = Reranker(self.database, self.records, replace(self.config.rerank, device=self.config.device),
                                      compute_maps=self._compute_cells)
        return self._reranker

    @staticmethod
    def _name_failures(batch: _Batch) -> None:
        """Error messages name the file as the user gave it (the decoder saw it resolved)."""
        for i, q in enumerate(batch.queries):
            result = batch.results[i]
            if result.error is not None and batch.descriptors[i] is None:
                result.error = _rename_error(result.error, q)
            elif batch.descriptors[i] is None and result.error is None:
                result.error = f"{display_path(q)}: no descriptor could be computed"

    def search_and_estimate(
        self, descriptors: np.ndarray, exclude_rows: Sequence[int | None] | None = None,
        cells: Sequence | None = None, notes: list[list[str]] | None = None,
    ) -> list[tuple[Estimate | None, list[Candidate]]]:
        """Top-k candidates and the estimate for each descriptor (rows of a Q×D matrix).

        ``exclude_rows[i]`` is the row of the query itself when it is in the database: a photo
        is never its own candidate. ``cells[i]``: the query's verification cells, to re-rank
        its candidates (None: search order). ``notes[i]`` collects what re-ranking could not do.
        """
        cfg = self.config
        exclude_rows = list(exclude_rows) if exclude_rows is not None else [None] * len(descriptors)
        cells = list(cells) if cells is not None else [None] * len(descriptors)
        want = max(cfg.top_k, cfg.estimate_k, cfg.rerank.top if cfg.rerank.enabled else 0)
        index = self._index_for(len(descriptors))
        start = _now()
        scores, ids = index.search(descriptors, want + 1)
        self.timings.search_s += _now() - start

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
            note = notes[q] if notes is not None else []
            answers.append(self._answer(keep, cells[q], note))
        self.timings.estimate_s += _now() - start
        return answers

    def _answer(self, keep: list[tuple[int, float]], cells, notes: list[str]
                ) -> tuple[Estimate, list[Candidate]]:
        """The candidates re-ranked (with ``cells``) and judged as ``geoloc eval`` scores them
        (:func:`geoloc.locating.judge.rank_and_judge`), and the top-k of them."""
        cfg = self.config
        if not self._verified_all:
            self._check_rows([self.records[j] for j, _ in keep])
        judged = rank_and_judge([j for j, _ in keep], [s for _, s in keep], self._lats, self._lons, cells=cells,
                                reranker=self.reranker if cfg.rerank.enabled else None,
                                reference=self.score_reference, estimate_k=cfg.estimate_k,
                                estimate_config=cfg.estimate, confidence_config=cfg.confidence)
        notes.extend(judged.notes)
        self.timings.rerank_s += judged.rerank_s
        estimate = judged.estimate
        candidates = []
        for rank, (j, s) in enumerate(zip(judged.rows[: cfg.top_k], judged.scores), start=1):
            lat, lon = float(self._lats[j]), float(self._lons[j])
            distance = float(haversine_m(lat, lon, estimate.lat, estimate.lon))
            candidates.append(Candidate(rank, self.records[j].path, lat, lon, s, distance,
                                        judged.inliers[rank - 1], judged.fused[rank - 1],
                                        judged.verifiers[rank - 1]))
        return estimate, candidates

    def score_reference(self) -> float | None:
        """The weak-match bar of queries judged without verification (:mod:`geoloc.locating.coverage`),
        or None when this database offers none.

        Measured once per Locator, and only when a query is judged without verification.
        """
        if self._reference_done:
            return self._reference
        self._reference_done = True
        from geoloc.locating.coverage import score_reference

        start = _now()
        sample = min(len(self.records), self.config.confidence.reference_sample)
        located = LocatedRows(self._file, self._rows) if self.compressed else self._matrix
        self._reference = score_reference(self._index_for(sample), located, self._lats, self._lons,
                                          self.config.confidence)
        self.timings.search_s += _now() - start
        return self._reference

    def _index_for(self, n_queries: int) -> SearchIndex:
        """The search index, built on first use; an IVF index once the batches justify one."""
        if self.index is None and self.compressed:
            from geoloc.retrieval.compressed import ensure_index

            start = _now()
            index, how = ensure_index(self.database, self._file, self._rows, self.config.search.compressed)
            self.index = CompressedSearch(index, self._file, self._rows, self.config.search.compressed, how)
            self.timings.index_s += _now() - start
        if self.index is None or self.index.ivf_deferred:
            start = _now()
            cache, key = index_cache(self.database, self.records, self.config.search)
            self.index = SearchIndex(
                self._matrix, self.config.search, cache=cache, cache_key=key, n_queries=n_queries
            )
            self.timings.index_s += _now() - start
        return self.index

    def _check_rows(self, records) -> None:
        damaged = self.database.damaged_rows(records)
        if damaged:
            names = [display_path(r.path) for r in records if r.row in damaged]
            raise self.database.damage([f"the stored descriptor of {names[0]} no longer matches its checksum"
                                        + (f" (and {len(names) - 1} more)" if len(names) > 1 else "")])

    def _check_dim(self, out: np.ndarray) -> None:
        if out.shape[1] != self.database.dim:
            raise DatabaseError(
                f"database {display_path(self.database.path)} holds {self.database.dim}-dimensional "
                f"descriptors but its model {self.database.manifest.get('model')} now gives "
                f"{out.shape[1]}; the model changed since the database was built"
            )


def locate(
    db: Path | str,
    queries: Sequence[Path | str],
    top_k: int | None = None,
    *,
    config: LocateConfig | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> list[LocateResult]:
    """Locate photos against the database at ``db`` (see :class:`Locator` to reuse one).

    ``top_k`` overrides ``config.top_k`` when given; otherwise the config's value stands.
    """
    cfg = config or LocateConfig()
    if top_k is not None:
        cfg = replace(cfg, top_k=top_k)
    with Locator(db, cfg) as locator:
        return locator.locate(queries, on_progress=on_progress)


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
        return display_path(query) + message[len(resolved):]
    return message


def _now() -> float:
    import time

    return time.perf_counter()
