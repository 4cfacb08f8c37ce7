"""One ``geoloc eval`` run as the library sees it: what was asked, whether it makes sense, the run.

The command line has many ways to say what to evaluate (photos against an existing database, a
benchmark folder, a dbStruct file, a CSV, several models at once) and as many ways to combine
them wrongly. Every rule lives here, checked before any photo is read, so a script calling the
library gets the same one-line usage errors as a person at the terminal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from geoloc.errors import GeolocError, require
from geoloc.evaluation.compare import CompareRow
from geoloc.evaluation.runner import EvalConfig, EvalResult
from geoloc.files import check_writable
from geoloc.progress import Progress


@dataclass
class EvalRequest:
    """What to evaluate: ``queries`` against ``db``, or a benchmark (``dataset``/``db_images``)."""

    queries: list[Path] = field(default_factory=list)
    db: Path | None = None  # an existing database; None with no benchmark: the default database
    db_images: list[Path] = field(default_factory=list)
    dataset: Path | None = None
    images_root: Path | None = None
    queries_root: Path | None = None
    split: str = "test"
    utm_zone: str | None = None
    compare: str | None = None  # "m1,m2,..." or "study"
    csv: Path | None = None  # "-": stdout
    plot: Path | None = None
    as_json: bool = False
    config: EvalConfig = field(default_factory=EvalConfig)

    @property
    def benchmark(self) -> bool:
        """The database side is built into the eval cache (not an existing ``--db``)."""
        return self.dataset is not None or bool(self.db_images)

    @property
    def csv_on_stdout(self) -> bool:
        from geoloc.files import STDOUT, output_kind

        return self.csv is not None and (str(self.csv) == "-" or output_kind(self.csv) == STDOUT)

    def check(self) -> None:
        """Every combination rule, before any work; the output files must be writable too."""
        require(self.config.trips is None or not self.benchmark,
                "--track, --clock, --evidence and --sequence need the queries' own capture times: "
                "use them with QUERIES --db DB, not --dataset or --db-images")
        require(self.config.trips is None or not self.compare, "--compare does not take trip options")
        require(not (self.as_json and self.csv_on_stdout), "choose one output format on stdout, not --json and --csv -")
        require(not (self.compare and self.config.model and self._compares_models()),
                "give either --model or --compare MODELS, not both (--compare with verifier names alone takes --model)")
        require(not (self.dataset is not None and self.queries),
                "give either QUERIES or --dataset, not both (a CSV dataset lists its queries)")
        require(self.dataset is not None or bool(self.queries),
                "give QUERIES (photos with GPS) or --dataset; see geoloc eval --help")
        require(not (self.benchmark and self.db is not None),
                "--db evaluates an existing database; with --dataset/--db-images the database is built "
                "in the eval cache, so leave out --db")
        require(not (self.compare and not self.benchmark),
                "--compare builds one database per model: give the database images (--db-images) or a "
                "--dataset, not an existing --db")
        require(self.plot is None or self.plot.suffix.lower() == ".png" or _streamed(self.plot),
                f"--plot {self.plot}: the curve is written as PNG; name the file .png")
        for target in (self.plot, None if self.csv_on_stdout else self.csv):
            if target is not None:
                check_writable(target)
        self.config.check()

    def _compare_names(self) -> list[str]:
        """``--compare``'s names as given (``verifiers`` not yet expanded)."""
        return [p.strip() for p in (self.compare or "").split(",") if p.strip()]

    def _compares_models(self) -> bool:
        from geoloc.evaluation.compare import split_names

        return bool(split_names([p for p in self._compare_names() if p != "verifiers"])[0])

    def compares_verifiers(self) -> bool:
        """``--compare`` names verifiers (or ``verifiers``): those verify, not the default."""
        from geoloc.evaluation.compare import split_names

        names = self._compare_names()
        return "verifiers" in names or bool(split_names(names)[1])

    def models(self) -> list[str] | None:
        if not self.compare:
            return None
        from geoloc.evaluation.compare import parse_model_list

        return parse_model_list(self.compare)


@dataclass
class EvalRun:
    """What one request produced: a result per model (None for a skipped one)."""

    results: list[tuple[str, EvalResult | None]]
    rows: list[CompareRow] | None  # --compare: one row per model, skipped ones included

    @property
    def done(self) -> list[tuple[str, EvalResult]]:
        return [(name, r) for name, r in self.results if r is not None]

    def raise_if_nothing(self) -> None:
        """A run that evaluated nothing at all is a failure, whatever it printed."""
        done = self.done
        if not done:
            reasons = "; ".join(f"{r.model}: {r.skipped}" for r in self.rows or [])
            raise GeolocError("no model could be evaluated" + (f": {reasons}" if reasons else ""))
        if all(r.summary.queries == 0 for _, r in done):
            raise GeolocError("no query could be evaluated: none of them could be read (see the warnings above)")


def run_eval(request: EvalRequest, default_db: Path, progress: Progress | None = None) -> EvalRun:
    """Check ``request`` and evaluate it; ``default_db`` is used when it names no database."""
    progress = progress or Progress()
    request.check()
    models = request.models()
    if not request.benchmark:
        from geoloc.evaluation.existing import evaluate_database

        result = evaluate_database(request.db or default_db, request.queries, request.config, progress)
        return EvalRun([(result.model, result)], None)
    split = _load_split(request)
    progress.message(f"{split.name}: {len(split.db_paths)} database images, {len(split.query_paths)} queries "
                     f"({split.kind})")
    if models:
        from geoloc.evaluation.compare import compare_models

        rows = compare_models(split, models, request.config, progress)
        return EvalRun([(r.model, r.result) for r in rows], rows)
    from geoloc.evaluation.runner import evaluate_split

    result = evaluate_split(split, request.config, progress)
    return EvalRun([(result.model, result)], None)


def _load_split(request: EvalRequest):
    from geoloc.evaluation.datasets import load_dataset, read_exif_split

    if request.dataset is not None:
        return load_dataset(request.dataset, db_images=request.db_images, images_root=request.images_root,
                            queries_root=request.queries_root, split=request.split, utm_zone=request.utm_zone)
    return read_exif_split(request.queries, request.db_images)


def _streamed(path: Path) -> bool:
    """An output that is not a file to name (``-``, ``/dev/stdout``, a FIFO, a device): its
    name says nothing of the format, so the ``.png`` rule does not apply."""
    from geoloc.errors import GeolocError
    from geoloc.files import FILE, output_kind

    try:
        return str(path) == "-" or output_kind(path) != FILE
    except GeolocError:
        return False  # refused later, with its own reason

