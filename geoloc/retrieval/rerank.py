"""Re-ranking: the global search's top candidates, reordered by geometric verification.

The search (:mod:`geoloc.retrieval.search`) proposes candidates by one global descriptor; this module
checks the best of them (``top``, 20 by default) against the query cell by cell
(:mod:`geoloc.retrieval.verify`) and reorders them by ``cosine + 12 · inliers / query cells``. The
candidates' maps come from the database, where they are stored with each descriptor; a
database made before maps were stored has them computed from the photo files, once per
candidate and Locator (slower, and a candidate whose file is gone or changed keeps its global
score alone, and the result says so).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from geoloc.retrieval import verify
from geoloc.files import display_path


@dataclass
class RerankConfig:
    #: Verify and reorder the top candidates (``--rerank/--no-rerank``).
    enabled: bool = True
    #: Candidates verified per query (``--rerank-top``): 20 measured as enough on the dev sets
    #: (the right place is almost always among them) at about 0.25 s a query on 2 cores.
    top: int = 20
    #: None: the verifier's own (``verify.WEIGHT`` dense, ``verify.SIFT_WEIGHT`` SIFT).
    weight: float | None = None
    #: "dense": the network's stride-16 cells, stored with the database (the default, measured
    #: better); "sift": OpenCV SIFT keypoints from the photo files, cached per Reranker.
    verifier: str = "dense"

    def check(self) -> None:
        from geoloc.errors import UsageError

        if self.verifier not in VERIFIERS:
            raise UsageError(f"unknown verifier {self.verifier!r}; choose one of {', '.join(VERIFIERS)}")

    @property
    def fusion_weight(self) -> float:
        if self.weight is not None:
            return float(self.weight)
        return verify.SIFT_WEIGHT if self.verifier == "sift" else verify.WEIGHT


VERIFIERS = ("dense", "sift")


@dataclass
class Reranked:
    """One query's verification: the new order of its first candidates, and what it found."""

    order: list[int]  # indexes into the candidates given, best first
    inliers: list[int | None]  # per candidate given: consistent matches, None when not verified
    fused: list[float]
    flag: str  # "verified", "unverified" or "no match"
    top_inliers: int
    notes: list[str] = field(default_factory=list)


class Reranker:
    """Verifies queries against the candidates of one database (reuse it across queries)."""

    def __init__(self, database, records, config: RerankConfig,
                 compute_maps: Callable[[list[Path]], list[verify.Cells | None]] | None = None):
        """``records``: the searchable photos, by search row. ``compute_maps(paths)``: their
        cells from the photo files, for a database that stores no maps (None: no fallback)."""
        config.check()
        self.database = database
        self.records = records
        self.config = config
        self.compute_maps = compute_maps
        self.stored = database.maps is not None
        if config.verifier == "sift":  # keypoints come from the files, never from stored maps
            self.stored = False
            self.compute_maps = self.sift_cells
        self.stride = float(database.maps.stride) if self.stored else 0.0
        self._cache: dict[int, verify.Cells | None] = {}
        self._why: dict[int, str] = {}

    def sift_cells(self, paths: Sequence[Path]) -> list[verify.Cells | None]:
        """SIFT keypoints of photo files at the database's image size."""
        side = int(self.database.manifest["preprocess"]["max_side"])
        return [verify.sift_cells(p, side) for p in paths]

    def cells(self, rows: Sequence[int]) -> list[verify.Cells | None]:
        """The candidates' cells, by search row; None where there is nothing to verify with."""
        missing = [r for r in rows if r not in self._cache]
        if missing:
            if self.stored:
                slots = self.database.map_slots([self.records[r].row for r in missing])
                for r, slot in zip(missing, slots):
                    self._cache[r] = None if slot is None else verify.dequantize(*slot, self.stride)
                    if slot is None:
                        self._why[r] = "no verification map is stored for it"
            else:
                self._compute(missing)
        return [self._cache[r] for r in rows]

    def _compute(self, rows: list[int]) -> None:
        """Maps from the photo files, for a database that stores none: only files that are still
        the ones indexed (same size and mtime) are used."""
        usable, paths = [], []
        for r in rows:
            record = self.records[r]
            try:
                st = os.stat(record.path)
            except OSError:
                self._cache[r], self._why[r] = None, "its photo file is gone"
                continue
            if (st.st_size, st.st_mtime_ns) != (record.size, record.mtime_ns):
                self._cache[r], self._why[r] = None, "its photo file changed since it was indexed"
                continue
            usable.append(r)
            paths.append(Path(record.path))
        if not usable:
            return
        computed = self.compute_maps(paths) if self.compute_maps is not None else [None] * len(paths)
        for r, cells in zip(usable, computed):
            self._cache[r] = cells
            if cells is None:
                self._why[r] = "its photo file could not be read again"

    def rerank(self, query: verify.Cells, rows: Sequence[int], cosines: Sequence[float]) -> Reranked:
        """Reorder the first ``top`` candidates (search rows ``rows``, scores ``cosines``)."""
        n = min(len(rows), self.config.top)
        rows, cosines = list(rows[:n]), np.asarray(cosines[:n], dtype=np.float64)
        cells = self.cells(rows)
        verdict = verify.verify(query, cells, cosines, self.config.fusion_weight,
                                ratio=verify.SIFT_RATIO if self.config.verifier == "sift" else None)
        notes = [f"candidate {display_path(self.records[r].path)}: {self._why[r]}; ranked by its global score alone"
                 for r, c in zip(rows, cells) if c is None and r in self._why]
        return Reranked(
            order=verdict.order,
            inliers=[int(i) if i >= 0 else None for i in verdict.inliers],
            fused=[float(f) for f in verdict.fused],
            flag=verdict.flag,
            top_inliers=verdict.top_inliers,
            notes=notes,
        )
