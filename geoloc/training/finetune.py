"""``finetune``: weakly supervised NetVLAD training on the user's own GPS-tagged photos.

This module wires photos, models and the rest of the training package together, one step a
function: plan the tuples from the GPS positions, build the base model, decode the photos once,
fit a fresh vocabulary, train, whiten, write. The result is a geoloc model file (safetensors +
metadata) that ``geoloc index --model FILE`` accepts.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np

from geoloc.errors import PhotoError, require, require_at_least
from geoloc.progress import Progress
from geoloc.training.checkpoint import check_run, prepare_checkpoint_dir, remove_checkpoint
from geoloc.training.data import TrainingPhoto, unique

if TYPE_CHECKING:  # pragma: no cover
    from geoloc.training.loop import Trainer

#: Bases that get a fresh NetVLAD layer, k-means initialised on the training photos.
FRESH_BASES = ("vgg16", "alexnet")
TRAIN_LAYER_CHOICES = ("last_layer", "last_block")


@dataclass
class FinetuneConfig:
    """Every knob of a run; the defaults are the NetVLAD paper's."""

    base: str = "netvlad-vgg16-pitts30k"
    epochs: int = 30
    device: str = "auto"
    train_layers: str = "last_block"
    pos_radius_m: float = 10.0
    neg_radius_m: float = 25.0
    margin: float = 0.1
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 1e-3
    lr_step: int = 5
    lr_gamma: float = 0.5
    batch_size: int = 4
    n_neg: int = 10
    neg_sample: int = 1000
    cache_refresh: int = 1000
    val_fraction: float = 0.15
    val_cell_m: float = 50.0
    patience: int = 10
    threshold_m: float = 25.0
    seed: int = 0
    max_side: Optional[int] = None
    #: Photos per forward pass when computing descriptors (cache refreshes, validation, PCA);
    #: None: planned as ``geoloc index`` plans its batch (:func:`geoloc.models.runtime.plan_batch`).
    eval_batch_size: int | None = None
    workers: int = field(default_factory=lambda: max(1, min(8, os.cpu_count() or 2)))
    num_clusters: int = 64
    vocabulary_photos: int = 300
    vocabulary_features: int = 50_000
    pca: Optional[int] = None
    amp: bool = True
    image_memory_mb: int = 1024

    # Settings that may differ between an interrupted run and its --resume.
    RESUMABLE = ("epochs", "device", "patience", "eval_batch_size", "workers", "pca", "image_memory_mb")

    def check(self) -> None:
        """Reject impossible values before any photo is read or model loaded."""
        need = require
        require_at_least("--epochs", self.epochs, 1)
        need(self.train_layers in TRAIN_LAYER_CHOICES,
             f"--train-layers must be one of {', '.join(TRAIN_LAYER_CHOICES)}, not {self.train_layers!r}")
        need(self.pos_radius_m > 0, f"--pos-radius must be above 0 m, not {self.pos_radius_m:g}")
        need(self.neg_radius_m >= self.pos_radius_m,
             f"--neg-radius ({self.neg_radius_m:g} m) must not be below --pos-radius ({self.pos_radius_m:g} m)")
        need(self.margin > 0, f"--margin must be above 0, not {self.margin:g}")
        need(self.lr > 0, f"--lr must be above 0, not {self.lr:g}")
        need(0 <= self.momentum < 1, f"--momentum must be in [0, 1), not {self.momentum:g}")
        need(self.weight_decay >= 0, f"--weight-decay must not be negative, not {self.weight_decay:g}")
        need(0 < self.lr_gamma <= 1, f"--lr-gamma must be in (0, 1], not {self.lr_gamma:g}")
        require_at_least("--batch-size", self.batch_size, 1)
        require_at_least("--negatives", self.n_neg, 1)
        need(self.neg_sample >= self.n_neg,
             f"--neg-sample ({self.neg_sample}) must be at least --negatives ({self.n_neg})")
        require_at_least("--cache-refresh", self.cache_refresh, 1)
        need(0 <= self.val_fraction < 1, f"--val-fraction must be in [0, 1), not {self.val_fraction:g}")
        need(self.val_cell_m > 0, f"--val-cell must be above 0 m, not {self.val_cell_m:g}")
        require_at_least("--patience", self.patience, 1)
        require_at_least("--max-side", self.max_side, 32, " pixels")
        require_at_least("--pca", self.pca, 1)
        require_at_least("--lr-step", self.lr_step, 1)
        require_at_least("the descriptor batch size", self.eval_batch_size, 1)

    def train_settings(self):
        from geoloc.training.loop import TrainSettings

        return TrainSettings(
            epochs=self.epochs, margin=self.margin, lr=self.lr, momentum=self.momentum,
            weight_decay=self.weight_decay, lr_step=self.lr_step, lr_gamma=self.lr_gamma,
            batch_size=self.batch_size, n_neg=self.n_neg, neg_sample=self.neg_sample,
            cache_refresh=self.cache_refresh, patience=self.patience, threshold_m=self.threshold_m,
            seed=self.seed, eval_batch_size=self.eval_batch_size, amp=self.amp,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FinetuneResult:
    out: Path
    base: str
    device: str
    photos: int
    train_photos: int
    val_photos: int
    queries: int
    val_queries: int
    epochs_run: int
    best_epoch: int
    stopped_early: bool
    recall: Optional[dict[str, float]]
    history: list[dict[str, Any]]
    dim: int
    pca: Optional[dict[str, Any]]
    #: None once the run is complete (its checkpoint is removed then).
    checkpoint: Optional[Path]
    skipped: list[dict[str, str]]
    resumed: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "base": self.base,
            "device": self.device,
            "dim": self.dim,
            "photos": self.photos,
            "train_photos": self.train_photos,
            "val_photos": self.val_photos,
            "queries": self.queries,
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "resumed": self.resumed,
            "validation": None if self.recall is None else {
                "queries": self.val_queries, "recall": self.recall,
            },
            "history": self.history,
            "pca": self.pca,
            "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
            "skipped": self.skipped,
        }


# ------------------------------------------------------------------------------------------------
# The base model


def build_base(config: FinetuneConfig):
    """The model training starts from, on the CPU, with the chosen layers trainable.

    Registry names and model files come through ``load_model``; ``vgg16``/``alexnet`` get a
    fresh NetVLAD layer on the ImageNet backbone (``lite0-vlad`` is the offline equivalent).
    """
    from geoloc.models.model import build_model
    from geoloc.models.registry import load_model

    base = config.base
    if base in FRESH_BASES:
        model = build_model(
            base, "netvlad", num_clusters=config.num_clusters,
            pretrained_backbone=True, train_layers=config.train_layers, name=base,
        )
        model.base = base
    else:
        model = load_model(base, device="cpu")
    model.set_train_layers(config.train_layers)
    if config.max_side is not None:
        model.preprocess = model.preprocess.replace(max_side=int(config.max_side))
    return model


def fit_training_vocabulary(model, images, indices: Sequence[int], config: FinetuneConfig, device,
                            reporter: Progress) -> None:
    """k-means initialisation of a fresh NetVLAD layer from the training photos' local features,
    sampled as the indexer samples a database's (:mod:`geoloc.models.vocabulary`)."""
    import torch

    from geoloc.training.images import autocast
    from geoloc.models.vocabulary import FeatureSampler, fit_vocabulary, spread

    sample = [int(i) for i in spread(list(indices), max(1, config.vocabulary_photos))]
    sampler = FeatureSampler(len(sample), max_features=config.vocabulary_features, seed=config.seed)
    reporter.stage("fitting the NetVLAD vocabulary", len(sample))
    try:
        with torch.no_grad():
            for span, tensors in images.iter_chunks(sample, config.eval_batch_size):
                for i, tensor in zip(span, tensors):
                    with autocast(device, config.amp):
                        feats = model.local_features(tensor[None].to(device))[0].float().cpu()
                    sampler.add(i, feats)
                reporter.advance(len(span))
    finally:
        reporter.end_stage()
    features = sampler.sample()
    reporter.message(f"fitting {model.num_clusters} NetVLAD clusters on {features.shape[0]} local "
                     f"features of {len(sample)} photos")
    fit_vocabulary(model, features, len(sample), seed=config.seed)


# ------------------------------------------------------------------------------------------------
# The run


def fingerprint(photos: Sequence[TrainingPhoto], config: FinetuneConfig, base_hash: str = "") -> str:
    """What a checkpoint must match to be resumed: the photos, the base model's weights and
    every setting that shapes training."""
    settings = {k: v for k, v in config.to_json().items() if k not in FinetuneConfig.RESUMABLE}
    settings["base_weights"] = base_hash
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for p in photos:
        h.update(f"{p.path}\0{p.lat:.9f}\0{p.lon:.9f}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def finetune(
    photos: Sequence[TrainingPhoto],
    out: Path,
    config: FinetuneConfig | None = None,
    *,
    resume: bool = False,
    restart: bool = False,
    reporter: Progress | None = None,
    on_step: Callable[["Trainer"], None] | None = None,
) -> FinetuneResult:
    """Train ``config.base`` on ``photos`` and write the model file ``out``.

    Raises :class:`GeolocError` with what the data lacks when the photos cannot supervise
    training, and ``KeyboardInterrupt`` after saving a checkpoint when stopped (Ctrl-C or
    ``trainer.request_stop()`` from ``on_step``).
    """
    from geoloc.models.registry import pick_device

    config = config or FinetuneConfig()
    config.check()
    reporter = reporter or Progress()
    out = check_run(out, resume, restart)
    device = pick_device(config.device)

    photos = unique(photos)
    plan = plan_training(photos, config)  # fail fast, before any model is loaded, when the data cannot train
    if config.pca:
        from geoloc.training.pca import check_enough_photos

        check_enough_photos(int(config.pca), len(photos))  # not after hours of training
    ckpt_dir = prepare_checkpoint_dir(out, resume, restart)

    model = build_base(config)
    config = _run_as_the_extractor_does(model, config, device)
    preprocess = model.preprocess
    images = None
    try:
        photos, images, skipped = _decode_once(photos, preprocess, config, reporter)
        if skipped:
            plan = plan_training(photos, config)
        result = _train(model, images, photos, plan, config, device, ckpt_dir, resume, reporter, on_step)
        pca_info = None
        if config.pca:
            from geoloc.training.pca import attach_pca

            pca_info = attach_pca(model, images, config, ckpt_dir, device, reporter)
        model.to("cpu")
    finally:
        if images is not None:
            images.close()

    model.preprocess = preprocess
    model.base = _base_label(config.base)
    _, split, tuples, val_queries = plan
    from geoloc.models.modelfile import save_model_file

    save_model_file(model, out, _metadata(model, photos, split, tuples, val_queries, result, config, device, pca_info))
    # The run is complete: its checkpoint is no run to resume (--base OUT trains further).
    remove_checkpoint(ckpt_dir)
    return FinetuneResult(
        out=out, base=model.base, device=str(device), photos=len(photos),
        train_photos=int(len(split.train)), val_photos=int(len(split.val)),
        queries=int(len(tuples.queries)), val_queries=val_queries if result.validated else 0,
        epochs_run=result.epochs_run, best_epoch=result.best_epoch, stopped_early=result.stopped_early,
        recall=result.best_recall if result.validated else None,
        history=[h.to_json() for h in result.history], dim=int(model.dim),
        pca=pca_info, checkpoint=None, skipped=skipped, resumed=resume,
    )


def _run_as_the_extractor_does(model, config: FinetuneConfig, device) -> FinetuneConfig:
    """Set the model up as :class:`geoloc.descriptors.extract.Extractor` sets it up for ``geoloc index``
    (:func:`geoloc.models.runtime.prepare`: channels-last on the CPU, which speeds the backward
    pass as much as the forward), and plan the descriptor batch the same way, so that training
    and the descriptors it computes get the same gain. Mixed precision on CUDA stays
    ``--amp``'s: the trunk itself runs fp32 inside it."""
    from dataclasses import replace

    from geoloc.models import runtime

    runtime.prepare(model, device, "fp32")
    if config.eval_batch_size is None:
        max_side = int(config.max_side or model.preprocess.max_side)
        config = replace(config, eval_batch_size=runtime.plan_batch(model, max_side, device))
    return config


def _decode_once(photos: list[TrainingPhoto], preprocess, config: FinetuneConfig, reporter: Progress):
    """One decode of every photo: unusable files are dropped before tuples are built (and small
    collections end up cached, decoded, for the whole run). Returns the usable photos, their
    image set and what was skipped."""
    from geoloc.training.images import ImageSet

    def image_set(items):
        return ImageSet([p.path for p in items], preprocess, workers=config.workers,
                        memory_bytes=config.image_memory_mb << 20)

    images = image_set(photos)
    bad: dict[int, PhotoError] = {}
    reporter.stage("reading photos", len(photos))
    try:
        for span, _ in images.iter_chunks(list(range(len(photos))), 32,
                                          on_error=lambda i, exc: bad.__setitem__(i, exc)):
            reporter.advance(len(span))
    except BaseException:
        images.close()
        raise
    finally:
        reporter.end_stage()
    skipped: list[dict[str, str]] = []
    if not bad:
        return photos, images, skipped
    for i, exc in sorted(bad.items()):
        reporter.message(f"skipped {exc}")
        skipped.append({"path": str(photos[i].path), "reason": exc.reason})
    images.close()
    kept = [p for i, p in enumerate(photos) if i not in bad]
    return kept, image_set(kept), skipped


def _train(model, images, photos, plan, config: FinetuneConfig, device, ckpt_dir: Path, resume: bool,
           reporter: Progress, on_step):
    """Vocabulary (fresh bases), then the epochs; the model ends with its best epoch's weights."""
    from geoloc.training.loop import Trainer

    positions, split, tuples, val_queries = plan
    validated = val_queries > 0
    if not validated:
        why = ("--val-fraction 0" if config.val_fraction == 0 else
               "too few photos to hold out a whole area with photos within "
               f"{config.threshold_m:g} m of each other")
        reporter.message(f"no validation ({why}); keeping the epoch with the lowest training objective")

    if not resume and model.needs_vocabulary:
        model.to(device)
        fit_training_vocabulary(model, images, split.train.tolist(), config, device, reporter)
    elif resume:
        model.mark_vocabulary_fitted()  # the checkpoint holds the trained centroids
    model.to(device)

    cache_gib = len(split.train) * int(model.dim) * 4 / 2**30
    if cache_gib > 4:
        reporter.message(
            f"note: the mining cache holds {len(split.train)} descriptors of {model.dim} floats: "
            f"{cache_gib:.1f} GiB of memory (and as much in each checkpoint)"
        )
    trainer = Trainer(
        model, images, positions, split, tuples, config.train_settings(), device, ckpt_dir,
        fingerprint=fingerprint(photos, config, getattr(model, "weights_hash", "")),
        reporter=reporter, on_step=on_step,
    )
    if resume:
        trainer.resume()
        trainer.stopped_early = trainer.bad_epochs >= config.patience
        where = f" (query {trainer.step} of epoch {trainer.epoch + 1})" if trainer.order is not None else ""
        reporter.message(f"resuming after epoch {trainer.epoch}{where}")
    result = trainer.run(validated=validated)
    trainer.load_trainable_state(result.best_state)
    model.mark_vocabulary_fitted()
    return result


def _metadata(model, photos, split, tuples, val_queries: int, result, config: FinetuneConfig, device,
              pca_info) -> dict[str, Any]:
    """What the model file says about its making, for people and for reproducing it."""
    return {
        "base": model.base,
        "description": f"{model.base} fine-tuned by geoloc on {len(photos)} GPS-tagged photos",
        "geoloc_version": _version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "finetune": {k: v for k, v in config.to_json().items() if k not in ("device", "workers", "image_memory_mb")},
        "training": {
            "photos": len(photos), "train_photos": int(len(split.train)), "val_photos": int(len(split.val)),
            "queries": int(len(tuples.queries)), "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early, "device": str(device),
        },
        "validation_recall": result.best_recall if result.validated else None,
        "validation": {"queries": val_queries, "threshold_m": config.threshold_m,
                       "split": "grid cells", "cell_m": config.val_cell_m} if result.validated else None,
        "pca": pca_info,
    }


def plan_training(photos: Sequence[TrainingPhoto], config: FinetuneConfig):
    """Positions in metres, the split by place, the training tuples and the number of
    validation queries; :class:`TrainingDataError` saying what the data lacks."""
    from geoloc.geo import to_local_m
    from geoloc.training.tuples import build_tuples, require_trainable, split_by_place
    from geoloc.training.validate import countable_queries

    require_trainable_count(len(photos), config)
    lat = np.array([p.lat for p in photos])
    lon = np.array([p.lon for p in photos])
    positions = to_local_m(lat, lon, float(np.mean(lat)), float(np.mean(lon)))
    split = split_by_place(positions, config.val_fraction, config.val_cell_m, config.seed)
    tuples = build_tuples(positions[split.train], config.pos_radius_m, config.neg_radius_m)
    val_queries = countable_queries(positions, split.val.tolist(), config.threshold_m)
    if len(split.val) and (len(tuples.queries) == 0 or val_queries == 0):
        # Holding areas out left nothing to train on, or nothing to score: rather than waste
        # the held-out photos, train on everything, unvalidated.
        split = split_by_place(positions, 0.0, config.val_cell_m, config.seed)
        tuples = build_tuples(positions, config.pos_radius_m, config.neg_radius_m)
        val_queries = 0
    require_trainable(tuples, len(split.train), config.pos_radius_m, config.neg_radius_m)
    return positions, split, tuples, val_queries


def require_trainable_count(n: int, config: FinetuneConfig) -> None:
    from geoloc.training.tuples import TrainingDataError

    if n < 3:
        raise TrainingDataError(
            ("no GPS-tagged photo" if n == 0 else f"only {n} GPS-tagged photo(s)") + " to train on; "
            f"finetune needs many photos of the same "
            f"places: pairs taken within {config.pos_radius_m:g} m of each other, and others more "
            f"than {config.neg_radius_m:g} m away"
        )


def _base_label(base: str) -> str:
    path = Path(base).expanduser()
    return str(path.resolve()) if path.is_file() else base


def _version() -> str:
    from geoloc import __version__

    return __version__
