"""``index_photos``: discovery → diff with the database → (vocabulary) → extract → store.

The order of the steps is what makes a run safe to interrupt: the database is created (and
locked) before any work, the vocabulary is stored before any descriptor, and every batch of
descriptors is one transaction, so a re-run after a crash only redoes the batch in flight.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from geoloc.database import Database, PhotoRecord
from geoloc.descriptors.database_model import (
    check_request,
    load_database_model,
    max_side_of,
    new_manifest,
    record_precision,
    requested_model_key,
)
from geoloc.descriptors.cluster import RayConfig
from geoloc.indexing.vocabulary import ensure_vocabulary
from geoloc.errors import DatabaseError, GeolocError, PhotoError, RunInterrupted, require, require_at_least
from geoloc.files import display_path, json_path, json_path_fields
from geoloc.formatting import count
from geoloc.models.runtime import check_precision_name
from geoloc.progress import Prefixed, Progress, first_batch_status
from geoloc.indexing.refit import RefitOutcome, RefitReport
from geoloc.indexing import changes
from geoloc.indexing import refit
from geoloc.indexing.repair import RepairReport, claim_stored_rows, damaged_photos
from geoloc.retrieval.search import SearchConfig
from geoloc.retrieval.verify import stored_map


#: Where descriptors are computed (``--engine``).
ENGINES = ("local", "ray")


@dataclass
class IndexConfig:
    #: Registry name or model file; None: the database's model, or the registry default.
    model: Optional[str] = None
    #: Longest side photos are resized to; None: the database's, else the model's default.
    max_side: Optional[int] = None
    #: Photos per network batch; None: planned from the image size, the model and the memory
    #: (:func:`geoloc.models.runtime.plan_batch`).
    batch_size: int | None = None
    #: Decoding threads; None: ``extract.default_workers`` for the device.
    workers: Optional[int] = None
    device: str = "auto"
    #: ``auto`` (fp32 on the CPU, autocast on CUDA), ``fp32``, ``bf16`` or ``fp16``.
    precision: str = "auto"
    #: Drop photos under the given PATHs whose files no longer exist.
    prune: bool = False
    #: Rebuild what damage left rebuildable instead of refusing a damaged database.
    repair: bool = False
    #: A new database stores each photo's verification map with its descriptor, for fast
    #: re-ranking (``geoloc locate``); without, re-ranking computes them from the photo files.
    maps: bool = True
    #: Vocabulary fitting (models whose NetVLAD centroids come from the user's photos).
    vocabulary_photos: int = 300
    vocabulary_features: int = 50_000
    #: A vocabulary fitted on fewer photos is provisional: fitted again, with every photo indexed
    #: again, once the database holds ``refit.REFIT_GROWTH`` times as many (geoloc.indexing.refit).
    provisional_vocabulary: int = 50
    #: After fitting a provisional vocabulary, say when geoloc fits it again and that
    #: ``geoloc index --refit`` does it: advice for a user's database; ``eval``'s cache database
    #: is not the user's to refit, and says what it means for the figures instead.
    vocabulary_advice: bool = True
    #: Fit the vocabulary again now, on a sample of every photo (``--refit``).
    refit: bool = False
    seed: int = 0
    #: "local": this process extracts; "ray": an actor pool on a Ray cluster does (the vocabulary
    #: sample, when one is fitted, still goes through this process: it is a few hundred photos).
    engine: str = "local"
    #: The cluster for ``engine="ray"`` (address, actors); None: a local Ray on this machine.
    ray: Optional[RayConfig] = None
    #: Search settings: past their compressed threshold, a run leaves the compressed index
    #: current (``geoloc.retrieval.compressed``), so that the next ``geoloc locate`` does not build it.
    search: SearchConfig = field(default_factory=SearchConfig)

    def check(self) -> None:
        require(self.engine in ENGINES, f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        require_at_least("--ray-workers", self.ray.workers if self.ray else None, 1)
        require_at_least("--batch-size", self.batch_size, 1)
        require_at_least("--workers", self.workers, 1)
        require_at_least("--max-side", self.max_side, 32, " pixels")
        require_at_least("--vocabulary-photos", self.vocabulary_photos, 1)
        check_precision_name(self.precision)


@dataclass
class IndexReport:
    db: Path
    model: str = ""
    total: int = 0
    located: int = 0
    unlocated: int = 0
    indexed: int = 0
    unchanged: int = 0
    errors: int = 0
    removed: int = 0
    #: Photos whose stored position changed because a sidecar appeared, changed or went; their
    #: pixels did not, so they are among ``unchanged`` and went through no network.
    positions_updated: int = 0
    error_files: list[tuple[Path, str]] = field(default_factory=list)
    #: "fitted" on the run that fitted the vocabulary, "refitted" when it was fitted again on more
    #: photos (see ``refit``), "stored" when it was reused, else None.
    vocabulary: Optional[str] = None
    elapsed_s: float = 0.0
    #: What ``--repair`` did (None without it).
    repair: Optional[RepairReport] = None
    #: The compressed search index, past its threshold: "cached" (already current), "extended",
    #: "built" or "retrained"; None below the threshold.
    search_index: Optional[str] = None
    #: Photos the database's vocabulary is fitted on (None: its model has none to fit).
    vocabulary_photos: Optional[int] = None
    #: The vocabulary refit this run made (None without one).
    refit: Optional[RefitReport] = None

    def take_refit(self, outcome: RefitOutcome) -> None:
        """The counts of the refitted database that took the old one's place."""
        self.indexed, self.unchanged, self.removed = outcome.indexed, outcome.unchanged, outcome.removed
        self.total, self.located, self.unlocated = outcome.total, outcome.located, outcome.unlocated
        self.positions_updated = 0
        self.vocabulary, self.vocabulary_photos, self.refit = "refitted", outcome.vocabulary_photos, outcome.report

    def add_error(self, path: Path, reason: str) -> None:
        """Recorded absolute, as the stored photos are (a script compares one with the other);
        not resolved, so that a broken link keeps its own name."""
        self.errors += 1
        self.error_files.append((Path(os.path.abspath(path)), reason))

    def to_json(self) -> dict:
        return {
            "db": json_path(self.db),
            "model": self.model,
            "total": self.total,
            "located": self.located,
            "unlocated": self.unlocated,
            "indexed": self.indexed,
            "unchanged": self.unchanged,
            "errors": self.errors,
            "removed": self.removed,
            "positions_updated": self.positions_updated,
            "error_files": [{**json_path_fields(p), "reason": r} for p, r in self.error_files],
            "vocabulary": self.vocabulary,
            "repair": self.repair.to_json() if self.repair is not None else None,
            "search_index": self.search_index,
            "vocabulary_photos": self.vocabulary_photos,
            "refit": self.refit.to_json() if self.refit is not None else None,
            "elapsed_s": round(self.elapsed_s, 3),
        }


# ------------------------------------------------------------------------------------------------


def index_photos(
    paths: Sequence[Path | str],
    db: Path | str,
    config: Optional[IndexConfig] = None,
    progress: Optional[Progress] = None,
) -> IndexReport:
    """Add the photos under ``paths`` to the database at ``db`` (created when missing).

    ``progress`` hears about each phase, photo and unusable file; the caller closes it. A
    damaged database is refused with a one-line :class:`DatabaseDamagedError`, unless
    ``config.repair``, which rebuilds what can be rebuilt (``paths`` may then be empty: the
    stored paths of damaged photos are used). Ctrl-C raises :class:`RunInterrupted` saying what
    was saved.
    """
    from geoloc.photos import discover, expand_globs

    config = config or IndexConfig()
    config.check()
    if config.engine == "ray":  # a missing extra or an unreachable cluster fails before any work
        from geoloc.descriptors.cluster import check_reachable, import_ray

        import_ray()
        if config.ray is not None and config.ray.address:
            check_reachable(config.ray.address)
    started = time.perf_counter()
    report = IndexReport(db=Path(db).expanduser().absolute())
    run = IndexRun(config, report, progress or Progress(), batch_size=config.batch_size or 1)
    paths = expand_globs(paths)  # a quoted 'trip/*.jpg' as locate takes it; none matching: an error
    found = discover(paths, run.on_error)  # GeolocError: missing PATH
    found = _at_least_one(found, paths, report.db, config)
    refit.finish_pending_swap(report.db)
    database, model = _open_database(report.db, config)
    with contextlib.ExitStack() as stack:
        stack.callback(database.close)
        report.model = database.manifest["model"]
        try:
            again = run.check_damage(database)
            run.progress.stage("Scanning", None)
            found_now = changes.scan(found, database, run.on_error, run.progress)
            report.unchanged += found_now.unchanged
            report.positions_updated += found_now.positions_updated
            changes.read_times_again(database, run.progress)  # once, for a database made before trips
            seen = found_now.seen
            to_index = sorted(set(found_now.to_index) | set(again))
            to_index, claimed = claim_stored_rows(database, to_index, run.on_error)
            report.unchanged += claimed
            if report.repair is not None:
                report.repair.claimed = claimed
            if model is None and not config.repair:
                due = refit.plan(database, to_index, config, run.progress.message,
                                 pruned=changes.pruned_by(paths, seen) if config.prune else lambda path: False)
                if due is not None and run.refit(database, due, to_index):
                    report.elapsed_s = time.perf_counter() - started
                    return report
            if model is None and to_index:
                # Loaded only now: a re-run over an unchanged archive needs no network at all, so
                # it neither imports torch nor reads the weights (seconds saved on every re-run).
                model = load_database_model(database, config.device, fitting=True)
            if model is None:
                report.vocabulary = "stored" if database.has_vocabulary() else None
            else:
                run.extract(database, model, to_index, stack)
        except KeyboardInterrupt:
            raise run.interrupted(database) from None
        if config.prune:
            report.removed = changes.prune(database, paths, seen)
        if (config.prune and database.dead_rows) or (database.needs_compaction() and not database.rebuilt):
            run.progress.stage("Compacting", None)
            database.compact()
        if config.repair:
            database.finish_repair()
        counts = database.counts()
        report.total, report.located, report.unlocated = (
            counts["total"], counts["located"], counts["unlocated"])
        if config.search.use_compressed(report.located):
            report.search_index = run.compressed_index(database, stack)
        report.vocabulary_photos = refit.fitted_on(database)
    report.elapsed_s = time.perf_counter() - started
    return report


@dataclass
class IndexRun:
    """One indexing run's shared state: what it reports, where it tells people, and how far it
    got (what an interrupted run says). The vocabulary's fit (``ensure_vocabulary``) moves
    ``stage``, ``sample`` and ``fitted``."""

    config: IndexConfig
    report: IndexReport
    progress: Progress
    #: "indexing", or "fitting" while the vocabulary's sample goes through the network.
    stage: str = "indexing"
    #: Photos the vocabulary is being fitted on, and how many of them are done.
    sample: int = 0
    fitted: int = 0
    #: Unusable photos, each reported once.
    failed: set[Path] = field(default_factory=set)
    #: Photos per network batch: the extractor's, once it is planned.
    batch_size: int = 1

    def on_error(self, exc: PhotoError) -> None:
        if exc.path in self.failed:
            return
        self.failed.add(exc.path)
        self.report.add_error(exc.path, exc.reason)
        self.progress.warning(self.report.error_files[-1][0], exc.reason)  # absolute, as recorded

    def finite_only(self, items, descriptors, stored):
        """A descriptor with a NaN or an infinity matches nothing and would poison every search
        it is in: such a photo is an error of this run, never a stored row."""
        import numpy as np

        values = np.asarray(descriptors)
        finite = np.isfinite(values.reshape(len(items), -1)).all(axis=1) if len(items) else np.ones(0, bool)
        if finite.all():
            return items, descriptors, stored
        for item, ok in zip(items, finite):
            if not ok:
                self.on_error(PhotoError(item.path, "the model gave a descriptor that is not finite (NaN or "
                                                    "infinity): the model file is unusable for this photo"))
        keep = [i for i, ok in enumerate(finite) if ok]
        return ([items[i] for i in keep], descriptors[keep],
                [stored[i] for i in keep] if stored is not None else None)

    def refit(self, database: Database, due: refit.RefitPlan, to_index: list[Path]) -> bool:
        """Fit the vocabulary again: every photo indexed into a new database beside this one
        (by this very function), which then takes its place; False when the run goes on with
        the old vocabulary (the refit says why)."""
        try:
            target, settings = refit.prepare(database, due, self.config)
            new = index_photos(due.photos, target, settings, Prefixed(self.progress, "Vocabulary refit: "))
        except RunInterrupted:
            raise refit.interrupted(database) from None
        except (GeolocError, OSError) as exc:
            self.progress.message(refit.abandoned(database, exc))
            return False
        outcome = refit.take_place(database, due, to_index, new, self.progress.message)
        for path, reason in outcome.errors:  # already shown (the refit's progress is this run's)
            if path not in self.failed:
                self.failed.add(path)
                self.report.add_error(path, reason)
        if outcome.swapped:
            self.report.take_refit(outcome)
        return outcome.swapped

    def check_damage(self, database: Database) -> list[Path]:
        """Refuse a damaged database; with ``repair``, the photos to index again."""
        if not self.config.repair:
            problems = database.verify()
            if problems:
                raise database.damage(problems)
            return []
        self.report.repair = RepairReport(rebuilt=list(database.repaired))
        return damaged_photos(database, self.report.repair)

    def interrupted(self, database: Database) -> RunInterrupted:
        total = database.counts()["total"]
        if self.stage == "fitting":
            return RunInterrupted(
                f"interrupted while fitting the vocabulary: {self.fitted} of {self.sample} sample photos "
                "are done and kept; run the same command again to continue")
        return RunInterrupted(
            f"interrupted: {count(self.report.indexed, 'photo')} saved in this run, {total} in the database; "
            "run the same command again to continue")

    def extract(self, database: Database, model, to_index: list[Path], stack: contextlib.ExitStack) -> None:
        """Vocabulary first (fitted when the database has none), then one batch at a time:
        each batch of descriptors is one committed transaction."""
        from geoloc.descriptors.extract import Extractor

        extractor = Extractor.create(model, max_side=max_side_of(database),
                                     batch_size=self.config.batch_size, workers=self.config.workers,
                                     precision=self.config.precision)
        stack.enter_context(extractor.cpu_threads())
        record_precision(database, extractor.precision)
        self.batch_size = extractor.batch_size
        self.report.vocabulary, kept = ensure_vocabulary(database, model, extractor, to_index, self)
        self.stage = "indexing"
        self.progress.stage("Indexing", len(to_index))

        stride = database.maps.stride if database.maps else 0

        def store(items, descriptors, maps=None) -> None:
            stored = [stored_map(m.numpy(), stride) for m in maps] if maps is not None else None
            commit(items, descriptors, stored)

        def commit(items, descriptors, stored=None) -> None:
            items, descriptors, stored = self.finite_only(items, descriptors, stored)
            if not items:
                return
            database.add_batch([PhotoRecord.of_photo(item) for item in items], descriptors, stored)
            self.report.indexed += len(items)
            self.progress.advance(len(items))

        done: set[Path] = set(self.failed)
        self.progress.advance(len(self.failed & set(to_index)))
        while kept:  # the vocabulary sample: its local features (and maps) are already computed
            items, feats, maps = kept.pop(0)
            store(items, extractor.pool(feats), maps)
            done.update(item.path for item in items)

        def failed(item) -> None:
            self.on_error(item.error)
            self.progress.advance(1)

        rest = [p for p in to_index if p not in done] if done else to_index
        if rest:
            self.progress.status(first_batch_status(rest, self.batch_size, again=bool(done)))
        if self.config.engine == "ray" and rest:
            for items, descriptors, stored in self.ray_batches(database, model, rest, stack, failed):
                commit(items, descriptors, stored)
        elif database.maps:
            for items, descriptors, maps in extractor.descriptors_and_maps(rest, on_error=failed):
                store(items, descriptors, maps)
        else:
            for items, descriptors in extractor.descriptors(rest, on_error=failed):
                store(items, descriptors)

    def compressed_index(self, database: Database, stack: contextlib.ExitStack) -> str:
        """Bring the compressed index up to date with what this run stored (the photos added
        are added to it; it is trained anew only when the data outgrew its sample). On Ray, its
        shards are filled by the cluster's workers."""
        from geoloc.retrieval.compressed import ensure_index

        self.progress.stage("Search index", None)
        records, matrix = database.descriptor_file(located_only=True)
        rows = np.fromiter((r.row for r in records), dtype=np.int64, count=len(records))
        ray, shards = None, 0
        if self.config.engine == "ray":
            from geoloc.descriptors.cluster import ray_session
            from geoloc.descriptors.ray import pool_size

            ray = stack.enter_context(ray_session(self.config.ray))
            shards = pool_size(ray, self.config.ray or RayConfig(), "cpu")[0]
        _, how = ensure_index(database, matrix, rows, self.config.search.compressed, ray=ray, shards=shards,
                              status=self.progress.status)
        return how

    def ray_batches(self, database: Database, model, paths: list[Path], stack: contextlib.ExitStack, failed):
        """The photos' descriptors (and stored maps) from an actor pool, block by block as the
        cluster finishes them; Ray is started or reached only now that there is work for it."""
        from geoloc.descriptors.cluster import ray_session
        from geoloc.descriptors.ray import ray_batches

        ray = stack.enter_context(ray_session(self.config.ray))
        self.progress.status(f"starting {len(paths)} photos on Ray")
        return ray_batches(ray, model, paths, max_side=max_side_of(database), batch_size=self.batch_size,
                           stride=float(database.maps.stride) if database.maps else 0.0,
                           device=self.config.device, workers=self.config.workers, config=self.config.ray,
                           on_error=failed, precision=self.config.precision)


def _at_least_one(found: Iterator[Path], paths: Sequence[Path | str], db: Path,
                  config: IndexConfig) -> Iterator[Path]:
    """The photos found, refused when there are none (before a database folder exists).

    A folder without a single photo is nearly always the wrong folder, and indexing it would
    still create a database (and load a model) for nothing. Only ``--prune`` (a folder emptied
    on purpose), ``--repair`` and ``--refit`` (which work on the stored photos, and may be given
    no PATH) go on without photos, and only on a database that exists.
    """
    first = next(found, None)
    if first is not None:
        return itertools.chain([first], found)
    if (config.prune or config.repair or config.refit) and Database.exists(db):
        return iter(())
    if not paths:  # --repair or --refit of a database that is not there
        raise GeolocError(f"no geoloc database at {display_path(db)} (run `geoloc index PATH` first)")
    from geoloc.photos import SUFFIXES

    where = ", ".join(display_path(p) for p in paths)
    kinds = ", ".join(sorted(SUFFIXES))
    outcome = "the database is unchanged" if Database.exists(db) else "no database was created"
    raise GeolocError(f"no photos in {where} (geoloc reads {kinds}; hidden folders are skipped): "
                      f"nothing to index, {outcome}")


# ------------------------------------------------------------------------------------------------
# Database and model


def _open_database(db_path: Path, config: IndexConfig):
    """The database (locked for writing) and, for a new database only, its model.

    An existing database is checked against ``--model`` and ``--max-side`` from its manifest
    alone; its model is loaded later, only if a photo needs it.
    """
    from geoloc.models.registry import load_model, pick_device

    if Database.exists(db_path):
        database = Database.open(db_path, write=True, repair=config.repair)
        try:
            check_request(database, config.model, config.max_side)
            return database, None
        except BaseException:
            database.close()
            raise
    _check_writable(db_path)
    from geoloc.models.runtime import resolve_precision

    key = requested_model_key(config.model)
    device = pick_device(config.device)
    resolve_precision(config.precision, device)  # fp16 on the CPU: refused before a folder exists
    model = load_model(key, device=device)
    if config.max_side is not None:
        model.preprocess = model.preprocess.replace(max_side=int(config.max_side))
    return Database.create(db_path, new_manifest(model, key, maps=config.maps)), model


def _check_writable(db_path: Path) -> None:
    """Fail before loading a model when the database folder cannot be made at all."""
    probe = db_path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise DatabaseError(f"cannot create database {display_path(db_path)}: "
                            f"{display_path(probe)} is a file, not a folder")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise DatabaseError(f"cannot create database {display_path(db_path)}: "
                            f"{display_path(probe)} is not writable")
