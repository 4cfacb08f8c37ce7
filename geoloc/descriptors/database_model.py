"""The model of a database: the one answer to "which network made these descriptors?".

A database's descriptors only compare with descriptors from exactly the same network: the same
weights, the same fitted NetVLAD vocabulary, the same image size. The manifest records all
three when the database is created; every later reader or writer gets its model here, where it
is checked against them, so an overwritten model file or a hand-edited folder is an error and
never a silently wrong answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from geoloc.errors import DatabaseError, ModelError
from geoloc.files import display_path

if TYPE_CHECKING:  # pragma: no cover
    from geoloc.database import Database
    from geoloc.descriptors.extract import Extractor
    from geoloc.models.model import GeolocModel


def requested_model_key(model: str | None) -> str:
    """How a ``--model`` value (None: the registry's default) is recorded in a new database:
    one answer for ``geoloc index`` and ``geoloc eval``'s cache."""
    from geoloc.models.registry import DEFAULT_MODEL, model_key

    return model_key(model or DEFAULT_MODEL)


def new_manifest(model: GeolocModel, key: str, maps: bool = True) -> dict[str, Any]:
    """What a new database records about the model ``key`` (see :func:`geoloc.models.model_key`),
    and how it stores verification maps (``maps``; see :mod:`geoloc.database.maps`)."""
    extra: dict[str, Any] = {}
    if maps:
        from geoloc.database.maps import MapSpec

        stride, channels = model.map_geometry()
        extra["maps"] = MapSpec.for_model(stride, channels, model.preprocess.max_side).to_dict()
    return {
        **extra,
        "model": key,
        "model_weights_hash": model.weights_hash,
        "weights_hash": model.weights_hash,
        "dim": int(model.dim),
        "preprocess": model.preprocess.to_dict(),
        "needs_vocabulary": model.needs_vocabulary,
        "vocabulary_sha256": None,
    }


def max_side_of(database: Database) -> int:
    """The image size the database's descriptors were computed at (queries use it too)."""
    return int(database.manifest["preprocess"]["max_side"])


def check_request(database: Database, model: str | None, max_side: int | None) -> None:
    """Refuse ``--model``/``--max-side`` values that differ from what built ``database``."""
    from geoloc.models.registry import model_key

    stored = database.manifest["model"]
    if model is not None and model_key(model) != stored:
        raise DatabaseError(
            f"database {display_path(database.path)} was built with model {stored}, not "
            f"{model_key(model)}; use another --db for another model (or leave out --model)"
        )
    if max_side is not None and max_side != max_side_of(database):
        raise DatabaseError(
            f"database {display_path(database.path)} was built with --max-side "
            f"{max_side_of(database)}, not {max_side}; descriptors of different sizes do not mix"
        )


def load_database_model(database: Database, device: str = "auto", *, fitting: bool = False) -> GeolocModel:
    """The database's own model with its vocabulary and image size, checked against the manifest.

    ``fitting``: the caller (the indexer) fits a missing vocabulary itself; otherwise a database
    whose model needs a vocabulary it does not have yet is an error that says what to run.
    """
    from geoloc.models.registry import load_model, pick_device

    manifest = database.manifest
    name = manifest["model"]
    where = f"database {display_path(database.path)}"
    model = load_model(name, device=pick_device(device))
    expected = manifest.get("model_weights_hash")
    if expected and model.weights_hash and model.weights_hash != expected:
        raise DatabaseError(
            f"{where} was built with model {name} whose weights have changed since "
            f"({expected[:12]} → {model.weights_hash[:12]}); re-index into a new --db with the current model"
        )
    model.preprocess = model.preprocess.replace(max_side=max_side_of(database))
    if database.has_vocabulary():
        _load_vocabulary(database, model, where)
    elif model.needs_vocabulary and not fitting:
        raise DatabaseError(f"{where} has no vocabulary for model {name} yet; run `geoloc index` on it")
    if int(model.dim) != database.dim:
        raise DatabaseError(
            f"{where} holds {database.dim}-dimensional descriptors but model {name} gives {model.dim}"
        )
    return model


def _load_vocabulary(database: Database, model: GeolocModel, where: str) -> None:
    state = database.load_vocabulary()
    try:
        model.load_vocabulary(state)
    except ModelError as exc:
        raise DatabaseError(f"{where}: its vocabulary does not fit model {database.manifest['model']} ({exc})") from None
    recorded = database.manifest.get("vocabulary_sha256")
    if recorded and model.vocabulary_hash() != recorded:
        raise DatabaseError(
            f"{where}: its vocabulary file does not match its manifest (the folder was modified by "
            "hand?); re-index into a new --db"
        )


def store_vocabulary(database: Database, model: GeolocModel, extra: dict[str, Any]) -> None:
    """Store the model's fitted vocabulary, and make the manifest's weights hash identify it as
    well as the weights (one transaction: a crash leaves both or neither)."""
    database.save_vocabulary(model.vocabulary_state(), vocabulary_manifest(database, model, extra))


def vocabulary_manifest(database: Database, model: GeolocModel, extra: dict[str, Any]) -> dict[str, Any]:
    import hashlib

    vocab_hash = model.vocabulary_hash()
    combined = hashlib.sha256(f"{database.manifest.get('model_weights_hash', '')}:{vocab_hash}".encode()).hexdigest()
    return {"vocabulary_sha256": vocab_hash, "weights_hash": combined, **extra}


def record_precision(database: Database, precision: str) -> None:
    """Record in the manifest the precision descriptors are being computed at.

    Provenance, not identity: descriptors of one network at fp32 and at bf16 differ by about
    1e-2 in cosine (lite0-vlad on the lund walk: scores within 9e-3, recall unchanged;
    docs/database.md, "Precision"), less than what separates places, so a
    database takes queries at any precision, and a run at another precision than the one that
    built it may add to it; the manifest then says ``"mixed"``. A database made before
    precisions were recorded was computed in fp32.
    """
    stored = database.manifest.get("precision")
    if stored is None:
        stored = "fp32" if len(database) else precision
    value = stored if stored == precision else "mixed"
    if database.manifest.get("precision") != value:
        database.update_manifest({"precision": value})


def query_extractor(model: GeolocModel, database: Database, *, batch_size: int | None = None,
                    workers: int | None = None, precision: str = "auto") -> Extractor:
    """The extractor for photos compared with ``database``: its image size, no file hashing
    (a query is not stored), decoding threads for the device the model is on. Queries need
    not use the database's precision (see :func:`record_precision`)."""
    from geoloc.descriptors.extract import Extractor

    return Extractor.create(model, max_side=max_side_of(database), batch_size=batch_size,
                            workers=workers, hash_files=False, precision=precision)


def model_file_problem(manifest: dict) -> str | None:
    """What makes the model file a database (its ``manifest``) was built with unusable now, or None.

    ``geoloc locate`` would refuse such a database with "weights have changed" after loading
    the model; ``geoloc check`` says it first, from the file's hash alone (no torch). A
    registry model's weights are the hub cache's concern, and a converted checkpoint's hash is
    its conversion's: only geoloc's own ``.safetensors`` model files are checked here.
    """
    from pathlib import Path

    from geoloc.files import sha256_file_cached

    path = Path(str(manifest.get("model", "")))
    if not path.is_absolute() or path.suffix.lower() != ".safetensors":
        return None
    if not path.is_file():
        return (f"its model file {display_path(path)} is gone: no query can be described with the "
                "database's model; put the file back")
    expected = manifest.get("model_weights_hash")
    if expected and sha256_file_cached(path) != expected:
        return (f"its model file {display_path(path)} now holds other weights than the database was "
                "built with (overwritten by a later `geoloc finetune --out`?); put the original back, "
                "or index into a new --db with this one")
    return None

