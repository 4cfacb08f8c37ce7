"""``index_photos``: discovery → diff with the database → (vocabulary) → extract → store.

The order of the steps is what makes a run safe to interrupt: the database is created (and
locked) before any work, the vocabulary is stored before any descriptor, and every batch of
descriptors is one transaction, so a re-run after a crash only redoes the batch in flight.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

from geoloc.database import Database, PhotoRecord, display_path, file_sha256
from geoloc.errors import DatabaseError, GeolocError, ModelError, PhotoError


@dataclass
class IndexConfig:
    #: Registry name or model file; None: the database's model, or the registry default.
    model: Optional[str] = None
    #: Longest side photos are resized to; None: the database's, else the model's default.
    max_side: Optional[int] = None
    batch_size: int = 16
    #: Decoding threads; None: ``extract.default_workers`` for the device.
    workers: Optional[int] = None
    device: str = "auto"
    #: Drop photos under the given PATHs whose files no longer exist.
    prune: bool = False
    #: Vocabulary fitting (models whose NetVLAD centroids come from the user's photos).
    vocabulary_photos: int = 300
    vocabulary_features: int = 50_000
    seed: int = 0


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
    error_files: list[tuple[Path, str]] = field(default_factory=list)
    #: "fitted" on the run that fitted the vocabulary, "stored" when it was reused, else None.
    vocabulary: Optional[str] = None
    compacted_rows: int = 0
    elapsed_s: float = 0.0
    decode_s: float = 0.0
    network_s: float = 0.0
    store_s: float = 0.0

    def add_error(self, path: Path, reason: str) -> None:
        self.errors += 1
        self.error_files.append((Path(path), reason))

    def to_json(self) -> dict:
        return {
            "db": display_path(self.db),
            "model": self.model,
            "total": self.total,
            "located": self.located,
            "unlocated": self.unlocated,
            "indexed": self.indexed,
            "unchanged": self.unchanged,
            "errors": self.errors,
            "removed": self.removed,
            "error_files": [{"path": display_path(p), "reason": r} for p, r in self.error_files],
            "vocabulary": self.vocabulary,
            "elapsed_s": round(self.elapsed_s, 3),
        }


class IndexProgress:
    """What an indexing run tells its caller as it goes; the CLI draws it with Rich."""

    def stage(self, description: str, total: Optional[int]) -> None:
        """A new phase begins (``total`` photos, or None when unknown)."""

    def advance(self, n: int = 1) -> None:
        """``n`` more photos of the current phase are done."""

    def warning(self, path: Path, reason: str) -> None:
        """One photo or folder could not be used; the run goes on."""

    def close(self) -> None:
        """The run is over (successfully or not)."""


# ------------------------------------------------------------------------------------------------


def index_photos(
    paths: Sequence[Path | str],
    db: Path | str,
    config: Optional[IndexConfig] = None,
    progress: Optional[IndexProgress] = None,
) -> IndexReport:
    """Add the photos under ``paths`` to the database at ``db`` (created when missing)."""
    from geoloc.photos import discover

    config = config or IndexConfig()
    progress = progress or IndexProgress()
    started = time.perf_counter()
    db_path = Path(db).expanduser().absolute()
    report = IndexReport(db=db_path)
    _check_options(config)

    def on_error(exc: PhotoError) -> None:
        report.add_error(exc.path, exc.reason)
        progress.warning(exc.path, exc.reason)

    found = discover([Path(p).expanduser() for p in paths], on_error)  # GeolocError: missing PATH
    database, model = _open_database(db_path, config)
    stack = contextlib.ExitStack()
    try:
        report.model = database.manifest["model"]
        progress.stage("Scanning", None)
        to_index, seen = _diff(found, database, report, on_error, progress)
        if model is None and to_index:
            # Loaded only now: a re-run over an unchanged archive needs no network at all, so it
            # neither imports torch nor reads the weights (seconds saved on every re-run).
            model = _model_for_existing(database, config)
        if model is None:
            report.vocabulary = "stored" if database.has_vocabulary() else None
            kept = []
        else:
            from geoloc.extract import ExtractConfig, Extractor, default_workers, model_device

            device = model_device(model)
            extract_config = ExtractConfig(
                max_side=int(database.manifest["preprocess"]["max_side"]),
                batch_size=config.batch_size,
                workers=config.workers or default_workers(device),
            )
            extractor = Extractor(model, extract_config, device=device)
            stack.enter_context(extractor.cpu_threads())
            report.vocabulary, kept = _ensure_vocabulary(database, model, extractor, to_index,
                                                         config, progress)

        progress.stage("Indexing", len(to_index))

        def store(items, descriptors) -> None:
            t0 = time.perf_counter()
            database.add_batch([_record(item) for item in items], descriptors)
            report.store_s += time.perf_counter() - t0
            report.indexed += len(items)
            progress.advance(len(items))

        done: set[Path] = set()
        while kept:  # the vocabulary sample: its local features are already computed
            items, feats = kept.pop(0)
            store(items, extractor.pool(feats))
            done.update(item.path for item in items)
        rest = [p for p in to_index if p not in done] if done else to_index

        def failed(item) -> None:
            on_error(item.error)
            progress.advance(1)

        if model is not None:
            for items, descriptors in extractor.descriptors(rest, on_error=failed):
                store(items, descriptors)
            report.decode_s = extractor.stats.decode_s
            report.network_s = extractor.stats.network_s

        if config.prune:
            report.removed = _prune(database, paths, seen, progress)
        if (config.prune and database.dead_rows) or database.needs_compaction():
            progress.stage("Compacting", None)
            report.compacted_rows = database.compact()
        counts = database.counts()
        report.total, report.located, report.unlocated = (
            counts["total"], counts["located"], counts["unlocated"])
    finally:
        stack.close()
        database.close()
        progress.close()
    report.elapsed_s = time.perf_counter() - started
    return report


def _check_options(config: IndexConfig) -> None:
    if config.batch_size < 1:
        raise GeolocError(f"--batch-size must be at least 1, got {config.batch_size}")
    if config.workers is not None and config.workers < 1:
        raise GeolocError(f"--workers must be at least 1, got {config.workers}")
    if config.max_side is not None and config.max_side < 32:
        raise GeolocError(f"--max-side must be at least 32 pixels, got {config.max_side}")


# ------------------------------------------------------------------------------------------------
# Database and model


def default_model_name() -> str:
    from geoloc.models.registry import DEFAULT_MODEL

    return DEFAULT_MODEL


def _model_key(spec: str) -> str:
    """How a ``--model`` value is recorded: a registry name as is, a file as its resolved path."""
    from geoloc.models.registry import list_models

    if any(entry.name == spec for entry in list_models()):  # registry names win
        return spec
    path = Path(spec).expanduser()
    if path.exists() or os.sep in spec or path.suffix:
        return str(path.resolve())
    return spec  # neither: load_model says which names are valid


def _open_database(db_path: Path, config: IndexConfig):
    """The database (locked for writing) and, for a new database only, its model.

    An existing database is checked against ``--model`` and ``--max-side`` from its manifest
    alone; its model is loaded later, by ``_model_for_existing``, only if a photo needs it.
    """
    from geoloc.models.registry import load_model, pick_device

    if Database.exists(db_path):
        database = Database.open(db_path, write=True)
        try:
            manifest = database.manifest
            stored = manifest["model"]
            if config.model is not None and _model_key(config.model) != stored:
                raise DatabaseError(
                    f"database {display_path(db_path)} was built with model {stored}, not "
                    f"{_model_key(config.model)}; use another --db for another model "
                    "(or leave out --model)"
                )
            stored_side = int(manifest["preprocess"]["max_side"])
            if config.max_side is not None and config.max_side != stored_side:
                raise DatabaseError(
                    f"database {display_path(db_path)} was built with --max-side {stored_side}, "
                    f"not {config.max_side}; descriptors of different sizes do not mix"
                )
            return database, None
        except BaseException:
            database.close()
            raise
    _check_writable(db_path)
    spec = config.model or default_model_name()
    model = load_model(_model_key(spec), device=str(pick_device(config.device)))
    if config.max_side is not None:
        model.preprocess = model.preprocess.replace(max_side=int(config.max_side))
    manifest = {
        "model": _model_key(spec),
        "model_weights_hash": getattr(model, "weights_hash", ""),
        "weights_hash": getattr(model, "weights_hash", ""),
        "dim": int(model.dim),
        "preprocess": model.preprocess.to_dict(),
        "needs_vocabulary": _needs_fitting(model),
        "vocabulary_sha256": None,
    }
    return Database.create(db_path, manifest), model


def _model_for_existing(database: Database, config: IndexConfig):
    """The model an existing database was built with, refused if its weights changed since."""
    from geoloc.models.registry import load_model, pick_device

    manifest = database.manifest
    stored = manifest["model"]
    model = load_model(stored, device=str(pick_device(config.device)))
    expected = manifest.get("model_weights_hash")
    if expected and getattr(model, "weights_hash", None) and model.weights_hash != expected:
        raise DatabaseError(
            f"database {display_path(database.path)}: the weights of model {stored} changed "
            f"since it was built ({expected[:12]} → {model.weights_hash[:12]}); use another --db"
        )
    model.preprocess = model.preprocess.replace(max_side=int(manifest["preprocess"]["max_side"]))
    return model


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


def _needs_fitting(model) -> bool:
    return bool(getattr(model, "needs_vocabulary", False)) and not bool(
        getattr(model, "has_vocabulary", False))


def model_for_database(database: Database, device: str = "cpu"):
    """The model that built ``database``, vocabulary and preprocessing included (for locate)."""
    from geoloc.models.registry import load_model

    model = load_model(database.manifest["model"], device=device)
    model.preprocess = model.preprocess.replace(
        max_side=int(database.manifest["preprocess"]["max_side"]))
    if database.manifest.get("needs_vocabulary") or database.has_vocabulary():
        state = database.load_vocabulary()
        if state is None:
            raise DatabaseError(
                f"database {display_path(database.path)} has no vocabulary for model "
                f"{database.manifest['model']} yet; run `geoloc index` on it"
            )
        model.load_vocabulary(state)
    return model


#: Local features of the vocabulary sample kept in memory, to pool them after fitting instead of
#: decoding those photos again (beyond this, the rest are simply decoded twice).
KEEP_FEATURES_BYTES = 256 * 2**20


def _ensure_vocabulary(database: Database, model, extractor, to_index: list[Path],
                       config: IndexConfig, progress: IndexProgress):
    """Load the database's vocabulary, or fit and store it before the first descriptor.

    Returns ``(state, kept)``: state is "stored", "fitted" or None; kept holds batches of
    ``(photos, local features)`` of the sample, ready to be pooled and stored.
    """
    if database.has_vocabulary():
        model.load_vocabulary(database.load_vocabulary())
        if not database.manifest.get("vocabulary_sha256"):  # killed between the two writes
            _record_vocabulary(database, model, {})
        return "stored", []
    if not _needs_fitting(model):
        return None, []
    if database.next_row:
        raise DatabaseError(
            f"database {display_path(database.path)} is damaged: it holds descriptors but "
            "not the vocabulary they were computed with; index into a new --db"
        )
    if not to_index:
        return None, []
    from geoloc.extract import FeatureSampler

    sample = _spread(to_index, config.vocabulary_photos)
    progress.stage("Fitting vocabulary", len(sample))
    sampler = FeatureSampler(sample, max_features=config.vocabulary_features, seed=config.seed)
    kept, kept_bytes = [], 0
    # Unusable photos are skipped quietly here: the indexing pass reports them.
    for items, feats in extractor.batches(sample, model.local_features,
                                          on_error=lambda item: progress.advance(1)):
        sampler.add(items, feats)
        if kept_bytes + feats.nbytes <= KEEP_FEATURES_BYTES:
            kept.append((items, feats))
            kept_bytes += feats.nbytes
        progress.advance(len(items))
    features = sampler.sample()
    clusters = getattr(model, "num_clusters", None) or 1
    if features.shape[0] < clusters:
        raise GeolocError(
            f"too few photos to fit the vocabulary of {database.manifest['model']}: "
            f"{features.shape[0]} local features from {len(sample)} photos, {clusters} needed; "
            "index more photos at once, or use a larger --max-side"
        )
    try:
        model.fit_vocabulary(features, seed=config.seed)
    except ModelError as exc:
        raise GeolocError(f"cannot fit the vocabulary: {exc}") from None
    database.save_vocabulary(model.vocabulary_state())
    _record_vocabulary(database, model, {"vocabulary_photos": len(sample),
                                         "vocabulary_features": int(features.shape[0])})
    return "fitted", kept


def _record_vocabulary(database: Database, model, extra: dict) -> None:
    """Make the manifest's weights hash identify the vocabulary as well as the weights."""
    vocab_hash = model.vocabulary_hash()
    combined = hashlib.sha256(
        f"{database.manifest.get('model_weights_hash', '')}:{vocab_hash}".encode()).hexdigest()
    database.update_manifest({"vocabulary_sha256": vocab_hash, "weights_hash": combined, **extra})


def _spread(paths: list[Path], n: int) -> list[Path]:
    """Up to ``n`` paths spread evenly over the (sorted) list: every folder gets a say."""
    if n <= 0:
        return []
    if len(paths) <= n:
        return list(paths)
    step = len(paths) / n
    return [paths[int(i * step)] for i in range(n)]


# ------------------------------------------------------------------------------------------------
# What to do with each photo


def _diff(found: Iterable[Path], database: Database, report: IndexReport, on_error,
          progress: IndexProgress) -> tuple[list[Path], set[str]]:
    """Split the photos found into those to index and those already current.

    A photo whose size and mtime match the database is current. When they differ, the content
    hash decides: same content (a copy, a ``touch``) only refreshes the stored size and mtime.
    """
    known = {path: (size, mtime_ns, sha256)
             for path, size, mtime_ns, sha256 in database.file_stats()}
    to_index: list[Path] = []
    touched: list[tuple[Path, int, int]] = []
    seen: set[str] = set()
    for path in found:
        progress.advance(1)
        try:
            resolved = Path(os.path.realpath(path))
            st = os.stat(resolved)
        except OSError as exc:
            on_error(PhotoError(path, f"cannot read: {exc.strerror or exc}"))
            continue
        key = os.fspath(resolved)
        if key in seen:
            continue
        seen.add(key)
        stored = known.get(key)
        if stored is None:
            to_index.append(resolved)
        elif stored[0] == st.st_size and stored[1] == st.st_mtime_ns:
            report.unchanged += 1
        else:
            try:
                same = stored[2] is not None and file_sha256(resolved) == stored[2]
            except OSError as exc:
                on_error(PhotoError(path, f"cannot read: {exc.strerror or exc}"))
                continue
            if same:
                touched.append((resolved, st.st_size, st.st_mtime_ns))
                report.unchanged += 1
            else:
                to_index.append(resolved)
    if touched:
        database.update_file_stats(touched)
    to_index.sort()
    return to_index, seen


def _record(item) -> PhotoRecord:
    meta = item.meta
    located = bool(getattr(meta, "located", False))
    return PhotoRecord(
        path=item.path,
        size=item.size,
        mtime_ns=item.mtime_ns,
        sha256=item.sha256,
        lat=meta.lat if located else None,
        lon=meta.lon if located else None,
        alt=getattr(meta, "alt", None),
        taken_at=getattr(meta, "taken_at", None),
        gps_accuracy_m=getattr(meta, "gps_accuracy_m", None),
        width=item.width,
        height=item.height,
    )


def _prune(database: Database, roots: Sequence[Path | str], seen: set[str],
           progress: IndexProgress) -> int:
    """Remove photos under ``roots`` whose files are gone.

    Only a definite "no such file" counts: a photo on an unmounted drive or in a folder that is
    unreadable right now is kept, so nothing is dropped by accident.
    """
    resolved_roots = [os.path.realpath(Path(r).expanduser()) for r in roots]
    gone: list[Path] = []
    for record in database.iter_photos():
        key = os.fspath(record.path)
        if key in seen or not any(_is_under(key, root) for root in resolved_roots):
            continue
        try:
            os.stat(record.path)
        except (FileNotFoundError, NotADirectoryError):
            gone.append(record.path)
        except OSError:
            pass
    return database.remove(gone) if gone else 0


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
