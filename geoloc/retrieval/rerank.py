"""Re-ranking: the global search's top candidates, reordered by geometric verification.

The search (:mod:`geoloc.retrieval.search`) proposes candidates by one global descriptor; this module
checks the best of them (``top``, 20 by default) against the query and reorders them by
``cosine + weight · inliers / query features``: the global score and the verification together,
since inliers alone favour look-alikes with much repeated texture as more candidates are verified.

Verifiers (:data:`VERIFIERS`): ``dense``, the network's own cells stored with the database
(:mod:`geoloc.retrieval.verify`); ``sift``, OpenCV keypoints from the files; ``xfeat`` and
``aliked``, learned keypoints and matchers (:mod:`geoloc.retrieval.learned`) from the files,
cached per photo on first use (:mod:`geoloc.retrieval.features_cache`); and the cascades
``dense+xfeat`` / ``dense+aliked``: the dense verifier orders the ``top`` candidates and the
learned one decides between the first ``CASCADE_KEEP`` of that order, so a learned matcher's
cost is paid a few times a query, not twenty.

Dense maps come from the database; a database made before maps were stored has them computed
from the photo files, once per candidate and Locator (slower, and a candidate whose file is gone
or changed keeps its global score alone, and the result says so).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from geoloc.retrieval import verify
from geoloc.files import display_path

#: Candidates a cascade's learned stage verifies: the dense order's first few. On the dev sets
#: the right place was among dense's first 5 whenever it was among its 20 (docs/benchmarks.md).
CASCADE_KEEP = 5


@dataclass(frozen=True)
class VerifierSpec:
    """One verifier: its fusion weight and the flag's thresholds, in its own inlier counts."""

    name: str
    weight: float  # fused = cosine + weight · inliers / query features
    verified_min: int  # homography inliers of the top-1 for "verified"...
    no_match_max: int  # ...fewer than this: "no match"
    dense: bool  # uses the stored dense maps (alone or as a cascade's first stage)
    learned: str | None  # the learned network (geoloc.retrieval.learned.SPECS), if any
    description: str

    def bars(self, side: int | None = None) -> tuple[int, int]:
        """(verified_min, no_match_max) for a query verified at ``side`` px (its longer side).

        A learned verifier's keypoints are matched within a few pixels whatever the image's
        size, so in a smaller image chance agreement covers more of it: out of coverage, XFeat
        reached at most 9 inliers at 640 px, 19 at 320 and 28 at 224 (docs/estimate.md), about
        in inverse proportion to the side. Its "no match" bar grows so, and "verified" stays a
        margin above it; right answers keep their 30–140 inliers at every size. Dense cells
        and SIFT keep theirs (dense cells are as coarse as the image is small).
        """
        if not self.learned or not side or side >= BARS_SIDE:
            return self.verified_min, self.no_match_max
        no_match = int(round(self.no_match_max * BARS_SIDE / max(int(side), 1)))
        return max(self.verified_min, no_match + BARS_MARGIN), no_match


#: The image size (longer side, px) the learned verifiers' bars were calibrated at; at smaller
#: sizes :meth:`VerifierSpec.bars` raises them, keeping "verified" this many inliers clear of
#: "no match".
BARS_SIDE = 640
BARS_MARGIN = 5


#: Every verifier, by the name ``--verifier`` takes. Thresholds of the learned ones were set on
#: the dev sets (docs/estimate.md, "Calibration per verifier").
VERIFIERS: dict[str, VerifierSpec] = {s.name: s for s in (
    VerifierSpec("dense", verify.WEIGHT, verify.VERIFIED_MIN, verify.NO_MATCH_MAX, True, None,
                 "the network's stride-16 cells, stored with the database"),
    VerifierSpec("sift", verify.SIFT_WEIGHT, verify.VERIFIED_MIN, verify.NO_MATCH_MAX, False, None,
                 "OpenCV SIFT keypoints from the photo files"),
    # 512 keypoints a photo: about a third of the counts of 1,200 dense cells. Out of coverage
    # (the Arezzo walk against itself, the cat) reached at most 9 (XFeat) and 12 (ALIKED); from 30
    # up, 94 % (XFeat) and 98 % (ALIKED) of the top-1s held the truth inside their radius.
    VerifierSpec("xfeat", 2.0, 30, 10, False, "xfeat", "XFeat + LighterGlue on every verified candidate"),
    VerifierSpec("aliked", 2.0, 30, 13, False, "aliked", "ALIKED + LightGlue on every verified candidate"),
    # Cascades: the learned stage adds its evidence to dense's fused score (weight 12, as dense:
    # an XFeat inlier a share of 512, so it counts about twice a dense one), never replaces it:
    # where the learned network finds little (ALIKED on a dark photo), dense's order stands.
    VerifierSpec("dense+xfeat", 12.0, 30, 10, True, "xfeat",
                 f"dense orders the candidates, XFeat + LighterGlue adds its evidence to the first {CASCADE_KEEP}"),
    VerifierSpec("dense+aliked", 12.0, 30, 13, True, "aliked",
                 f"dense orders the candidates, ALIKED + LightGlue adds its evidence to the first {CASCADE_KEEP}"),
)}
#: The default ``--verifier`` (docs/benchmarks.md, "The default verifier, dense then XFeat"): the same
#: recall@1 as dense alone on the dev sets, far more right answers ``high`` at night, at about
#: twice dense's cost (0.7 s a query on 2 cores).
DEFAULT_VERIFIER = "dense+xfeat"
#: What verifies when the default's package is not installed: a working install without the
#: optional wheel keeps locating, and says what it is missing (:func:`fallback_note`).
FALLBACK_VERIFIER = "dense"


def default_verifier() -> str:
    """The verifier used when none is named: :data:`DEFAULT_VERIFIER` where its package is
    installed, else :data:`FALLBACK_VERIFIER`."""
    from geoloc.retrieval.learned import available

    learned = VERIFIERS[DEFAULT_VERIFIER].learned
    return DEFAULT_VERIFIER if learned is None or available(learned) else FALLBACK_VERIFIER


def fallback_note() -> str | None:
    """One line for a run that verifies with the fallback because the default cannot run here."""
    if default_verifier() == DEFAULT_VERIFIER:
        return None
    from geoloc.errors import ModelError
    from geoloc.retrieval.learned import require

    try:
        require(VERIFIERS[DEFAULT_VERIFIER].learned)
    except ModelError as missing:  # names what is missing (the package, or kornia) and its install
        return f"verifying with {FALLBACK_VERIFIER} cells alone: the default verifier is {DEFAULT_VERIFIER}, and {missing}"
    return None


@dataclass
class Evidence:
    """A cascade query's two kinds of evidence: dense cells and learned keypoints (None: none)."""

    dense: verify.Cells | None
    learned: verify.Cells | None


@dataclass
class RerankConfig:
    #: Verify and reorder the top candidates (``--rerank/--no-rerank``).
    enabled: bool = True
    #: Candidates verified per query (``--rerank-top``): 20 measured as enough on the dev sets
    #: (the right place is almost always among them) at about 0.25 s a query on 2 cores.
    top: int = 20
    #: None: the verifier's own (:data:`VERIFIERS`).
    weight: float | None = None
    #: A name of :data:`VERIFIERS` (``--verifier``); by default :func:`default_verifier`.
    verifier: str = field(default_factory=default_verifier)
    #: Where the learned networks run: auto (cuda, mps, cpu), or a torch device name.
    device: str = "auto"

    def check(self) -> None:
        """An unknown name is a usage error, a learned verifier whose package is missing a
        one-line model error with the command that installs it: both before any work."""
        from geoloc.errors import UsageError

        if self.verifier not in VERIFIERS:
            raise UsageError(f"unknown verifier {self.verifier!r}; choose one of {', '.join(VERIFIERS)}")
        if self.enabled and self.spec.learned:
            from geoloc.retrieval.learned import require

            require(self.spec.learned)

    @property
    def spec(self) -> VerifierSpec:
        return VERIFIERS[self.verifier]

    @property
    def fusion_weight(self) -> float:
        """The weight of the verifier that decides the order (a cascade's learned stage)."""
        return float(self.weight) if self.weight is not None else self.spec.weight


@dataclass
class Reranked:
    """One query's verification: the new order of its first candidates, and what it found."""

    order: list[int]  # indexes into the candidates given, best first
    inliers: list[int | None]  # per candidate given: consistent matches, None when not verified
    fused: list[float]
    flag: str  # "verified", "unverified" or "no match"
    top_inliers: int
    notes: list[str] = field(default_factory=list)
    #: Per candidate given: the verifier its inliers are of (a cascade verifies its first few
    #: with the learned one, the rest with dense cells); None when not verified.
    verifiers: list[str | None] = field(default_factory=list)
    #: The query's longer side as the learned matcher saw it (its bars depend on it:
    #: :meth:`VerifierSpec.bars`); None without a learned stage.
    side: int | None = None


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
        self.spec = config.spec
        self.compute_maps = compute_maps
        self.stored = database.maps is not None
        self.side = int(database.manifest["preprocess"]["max_side"])
        self.learned = None
        if self.spec.learned:
            from geoloc.retrieval.features_cache import FeatureCache
            from geoloc.retrieval.learned import LearnedMatcher

            self.learned = LearnedMatcher(self.spec.learned, config.device)
            self.features = FeatureCache(self.spec.learned, self.side)
        if not self.spec.dense:  # keypoints come from the files, never from stored maps
            self.stored = False
            self.compute_maps = self.sift_cells if config.verifier == "sift" else self.learned_cells
        self.stride = float(database.maps.stride) if self.stored else 0.0
        self._cache: dict[int, verify.Cells | None] = {}
        self._learned: dict[int, verify.Cells | None] = {}
        self._why: dict[int, str] = {}
        self._lock = threading.Lock()  # eval judges queries on two threads
        self._stamps: dict[str, tuple[int, int]] | None = None  # database photos, by resolved path

    def sift_cells(self, paths: Sequence[Path]) -> list[verify.Cells | None]:
        """SIFT keypoints of photo files at the database's image size."""
        return [verify.sift_cells(p, self.side) for p in paths]

    def learned_cells(self, paths: Sequence[Path], stamps: Sequence[tuple[int, int] | None] | None = None
                      ) -> list[verify.Cells | None]:
        """Learned keypoints of photo files at the database's image size; ``stamps``: each
        file's (size, mtime_ns) when it is a database photo, whose keypoints are cached."""
        from geoloc.errors import PhotoError
        from geoloc.photos import load_image

        out: list[verify.Cells | None] = []
        for i, path in enumerate(paths):
            stamp = stamps[i] if stamps is not None else None
            cells = self.features.get(path, *stamp) if stamp else None
            if cells is None:
                try:
                    image = load_image(path, self.side)
                except PhotoError:
                    out.append(None)
                    continue
                cells = self.learned.extract(image)
                if stamp:
                    self.features.put(path, *stamp, cells)
            out.append(cells)
        return out

    def query_learned(self, paths: Sequence[Path]) -> list[verify.Cells | None]:
        """Queries' learned keypoints: a database photo queried again, unchanged, reads and fills
        the cache like a candidate; any other query is computed and not kept."""
        if self._stamps is None:
            self._stamps = {os.path.realpath(r.path): (r.size, r.mtime_ns) for r in self.records}
        stamps = []
        for p in paths:
            stamp = self._stamps.get(os.path.realpath(p))
            try:
                st = os.stat(p)
            except OSError:
                stamp = None
            else:
                stamp = stamp if stamp == (st.st_size, st.st_mtime_ns) else None
            stamps.append(stamp)
        return self.learned_cells(paths, stamps)

    def cells(self, rows: Sequence[int]) -> list[verify.Cells | None]:
        """The candidates' cells, by search row; None where there is nothing to verify with."""
        with self._lock:
            missing = [r for r in rows if r not in self._cache]
            if missing:
                if self.stored:
                    slots = self.database.map_slots([self.records[r].row for r in missing])
                    for r, slot in zip(missing, slots):
                        self._cache[r] = None if slot is None else verify.dequantize(*slot, self.stride)
                        if slot is None:
                            self._why[r] = "no verification map is stored for it"
                else:
                    self._compute(missing, self._cache, self.compute_maps)
            return [self._cache[r] for r in rows]

    def learned_of(self, rows: Sequence[int]) -> list[verify.Cells | None]:
        """The candidates' learned keypoints (a cascade's second stage), by search row."""
        with self._lock:
            missing = [r for r in rows if r not in self._learned]
            if missing:
                self._compute(missing, self._learned, self.learned_cells)
            return [self._learned[r] for r in rows]

    def _compute(self, rows: list[int], cache: dict, compute) -> None:
        """Cells from the photo files: only files that are still the ones indexed (same size and
        mtime) are used."""
        usable, paths = [], []
        for r in rows:
            record = self.records[r]
            try:
                st = os.stat(record.path)
            except OSError:
                cache[r], self._why[r] = None, "its photo file is gone"
                continue
            if (st.st_size, st.st_mtime_ns) != (record.size, record.mtime_ns):
                cache[r], self._why[r] = None, "its photo file changed since it was indexed"
                continue
            usable.append(r)
            paths.append(Path(record.path))
        if not usable:
            return
        if compute is None:
            computed = [None] * len(paths)
        elif compute == self.learned_cells:
            computed = compute(paths, [(self.records[r].size, self.records[r].mtime_ns) for r in usable])
        else:
            computed = compute(paths)
        for r, cells in zip(usable, computed):
            if isinstance(cells, Evidence):  # a cascade's query path computed them: its dense half
                cells = cells.dense
            cache[r] = cells
            if cells is None:
                self._why[r] = "its photo file could not be read again"

    def rerank(self, query, rows: Sequence[int], cosines: Sequence[float]) -> Reranked:
        """Reorder the first ``top`` candidates (search rows ``rows``, scores ``cosines``).
        ``query``: Cells, or for a cascade :class:`Evidence`."""
        n = min(len(rows), self.config.top)
        rows, cosines = list(rows[:n]), np.asarray(cosines[:n], dtype=np.float64)
        spec = self.spec
        first = query.dense if isinstance(query, Evidence) else query
        # the learned matcher's image size, which its bars depend on
        side = _side(query.learned if isinstance(query, Evidence) else first) if spec.learned else None
        cells = self.cells(rows)
        if spec.dense and spec.learned:
            verdict = verify.verify(first, cells, cosines, verify.WEIGHT)
            names = ["dense" if i >= 0 else None for i in verdict.inliers]
            flag = verdict.flag
            if isinstance(query, Evidence) and query.learned is not None:
                verdict, names, flag = self._decide(query.learned, rows, cosines, verdict, names, first, cells,
                                                    side)
        else:
            match = self.learned.match if spec.learned else None
            verdict = verify.verify(first, cells, cosines, self.config.fusion_weight,
                                    ratio=verify.SIFT_RATIO if spec.name == "sift" else None, match=match)
            names = [spec.name if i >= 0 else None for i in verdict.inliers]
            flag = verify.flag(verdict.top_inliers, *spec.bars(side))
        notes = [f"candidate {display_path(self.records[r].path)}: {self._why[r]}; ranked by its global score alone"
                 for r, c in zip(rows, cells) if c is None and r in self._why]
        return Reranked(
            order=verdict.order,
            inliers=[int(i) if i >= 0 else None for i in verdict.inliers],
            fused=[float(f) for f in verdict.fused],
            flag=flag,
            top_inliers=verdict.top_inliers,
            notes=notes,
            verifiers=names,
            side=side,
        )

    def _decide(self, query: verify.Cells, rows: list[int], cosines: np.ndarray, dense: verify.Verdict,
                names: list[str | None], dense_cells: verify.Cells | None, cells: list[verify.Cells | None],
                side: int | None):
        """A cascade's second stage: dense's first few, verified again by the learned matcher,
        reordered by dense's fused score plus the learned evidence (``weight · inliers / query
        keypoints``), ahead of the rest in dense's order. The flag weighs both verdicts
        (:func:`stronger`); the inliers shown are the learned ones where it verified."""
        keep = dense.order[:CASCADE_KEEP]
        learned = verify.verify(query, self.learned_of([rows[i] for i in keep]), dense.fused[keep],
                                self.config.fusion_weight, match=self.learned.match)
        inliers, fused = dense.inliers.copy(), dense.fused.copy()
        for j, i in enumerate(keep):
            if learned.inliers[j] >= 0:
                inliers[i], fused[i], names[i] = learned.inliers[j], learned.fused[j], self.spec.learned
        order = [keep[j] for j in learned.order] + dense.order[CASCADE_KEEP:]
        # The dense flag of the new top-1: dense's own when it kept its place, else that photo
        # verified again by dense alone (one more homography).
        top = order[0]
        dense_top = dense.top_inliers
        if top != dense.order[0] and dense_cells is not None and cells[top] is not None:
            dense_top = verify.verify(dense_cells, [cells[top]], cosines[[top]]).top_inliers
        dense_flag = verify.flag(dense_top)
        learned_flag = verify.flag(learned.top_inliers, *self.spec.bars(side))
        flag, weaker = stronger(dense_flag, learned_flag)
        top_inliers = learned.top_inliers if weaker == "learned" else dense_top
        return verify.Verdict(order, inliers, fused, top_inliers), names, flag


def _side(cells: verify.Cells | None) -> int | None:
    """The longer side of the image ``cells`` were found in (learned keypoints carry it)."""
    return max(cells.size) if cells is not None and cells.size else None


_RANK = {"no match": 0, "unverified": 1, "verified": 2}


def stronger(dense: str, learned: str) -> tuple[str, str]:
    """One flag from a cascade's two verdicts, and which of them is the weaker (its count is
    the one a warning quotes).

    Either verifier verifying is enough where the other only partly does: a night photo the
    learned matcher verifies is not held back by dense cells that darkness blurred. But when one
    verifies and the other finds no match at all, the answer is at most "unverified": a
    look-alike the learned matcher rejects is not ``high``, however its texture fools dense cells.
    """
    a, b = _RANK[dense], _RANK[learned]
    weaker = "dense" if a < b else "learned"
    if max(a, b) == 2 and min(a, b) == 0:
        return "unverified", weaker
    return (dense if a >= b else learned), weaker

def verifier_rows() -> list[dict]:
    """Every verifier as ``geoloc models verifiers`` lists it: whether it can run here, and
    what it needs when it cannot."""
    from geoloc.retrieval.learned import SPECS, available

    rows = []
    for spec in VERIFIERS.values():
        learned = SPECS.get(spec.learned) if spec.learned else None
        rows.append({
            "name": spec.name,
            "default": spec.name == DEFAULT_VERIFIER,
            # Where the default cannot run, the fallback verifies when no --verifier is given.
            "used_by_default": spec.name == default_verifier(),
            "available": learned is None or available(learned.name),
            "package": f"{learned.package}=={learned.version}" if learned else None,
            "install": learned.install if learned else None,
            "cached_bytes_per_photo": learned.bytes_per_photo if learned else None,
            "description": spec.description,
        })
    return rows
