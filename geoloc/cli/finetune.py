"""`geoloc finetune` — train NetVLAD on your own GPS-tagged photos (weak supervision by GPS)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from geoloc.cli.root import app
from geoloc.formatting import count
from geoloc.cli._common import DB_HELP, at_least, handle_errors, resolve_db

_TRAIN = "Training (the NetVLAD paper's defaults)"
_DATA = "Data and validation"
_RUN = "Run"


@app.command(no_args_is_help=False)
@handle_errors
def finetune(
    paths: Optional[List[Path]] = typer.Argument(
        None, metavar="PATH", help="Photos or folders of GPS-tagged photos to train on. Default: the located photos of --db.",
        show_default=False),
    db: Optional[Path] = typer.Option(None, "--db", metavar="DB", help=DB_HELP + " Used when no PATH is given.", show_default=False),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="FILE", help="Model file to write (.safetensors). Required.",
                                       show_default=False),
    base: str = typer.Option("netvlad-vgg16-pitts30k", "--base", metavar="NAME|FILE",
                             help="Model to start from: a registry name (lite0-vlad works offline), vgg16 or "
                                  "alexnet (ImageNet backbone + fresh NetVLAD), or a model file."),
    epochs: int = typer.Option(30, "--epochs", metavar="N", help="Epochs to train (in all, counting those before --resume)."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto (cuda, then mps, then cpu), cpu, cuda or mps."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run of the same --out."),
    restart: bool = typer.Option(False, "--restart", help="Discard the checkpoint of an earlier run and start over."),
    train_layers: str = typer.Option("last_block", "--train-layers", metavar="LAYERS",
                                     help="What trains besides NetVLAD: last_block (conv5 block) or last_layer.",
                                     rich_help_panel=_TRAIN),
    margin: float = typer.Option(0.1, "--margin", metavar="M", help="Triplet margin on squared distances.", rich_help_panel=_TRAIN),
    lr: float = typer.Option(1e-4, "--lr", metavar="RATE", help="SGD learning rate.", rich_help_panel=_TRAIN),
    momentum: float = typer.Option(0.9, "--momentum", metavar="M", help="SGD momentum.", rich_help_panel=_TRAIN),
    weight_decay: float = typer.Option(1e-3, "--weight-decay", metavar="W", help="SGD weight decay.", rich_help_panel=_TRAIN),
    lr_step: int = typer.Option(5, "--lr-step", metavar="N", help="Multiply the learning rate by --lr-gamma every this many "
                                "epochs.", rich_help_panel=_TRAIN),
    lr_gamma: float = typer.Option(0.5, "--lr-gamma", metavar="G", help="Learning-rate factor every --lr-step epochs (0.5: "
                                   "halved).", rich_help_panel=_TRAIN),
    batch_size: int = typer.Option(4, "--batch-size", metavar="N", help="Training tuples per step.", rich_help_panel=_TRAIN),
    negatives: int = typer.Option(10, "--negatives", metavar="N", help="Hard negatives per tuple.", rich_help_panel=_TRAIN),
    neg_sample: int = typer.Option(1000, "--neg-sample", metavar="N", help="Negatives sampled per query to find the hardest.",
                                   rich_help_panel=_TRAIN),
    cache_refresh: int = typer.Option(1000, "--cache-refresh", metavar="N",
                                      help="Queries between refreshes of the mining descriptor cache.",
                                      rich_help_panel=_TRAIN),
    num_clusters: int = typer.Option(64, "--num-clusters", metavar="K", help="NetVLAD clusters of a fresh layer (vgg16, alexnet).",
                                     rich_help_panel=_TRAIN),
    pca: Optional[int] = typer.Option(None, "--pca", metavar="DIM", help="After training, add PCA whitening to DIM dimensions.",
                                      rich_help_panel=_TRAIN, show_default=False),
    pos_radius: float = typer.Option(10.0, "--pos-radius", metavar="METRES", help="Potential positives lie within this many metres.",
                                     rich_help_panel=_DATA),
    neg_radius: float = typer.Option(25.0, "--neg-radius", metavar="METRES", help="Negatives lie beyond this many metres.",
                                     rich_help_panel=_DATA),
    max_side: Optional[int] = typer.Option(None, "--max-side", metavar="PIXELS",
                                           help="Resize photos to this longest side. Default: the model's.",
                                           rich_help_panel=_DATA, show_default=False),
    val_fraction: float = typer.Option(0.15, "--val-fraction", metavar="F",
                                       help="Share of photos held out for validation, as whole areas (0: none).",
                                       rich_help_panel=_DATA),
    val_cell: float = typer.Option(50.0, "--val-cell", metavar="METRES", help="Size in metres of the areas held out.",
                                   rich_help_panel=_DATA),
    patience: int = typer.Option(10, "--patience", metavar="N", help="Stop after this many epochs without better validation.",
                                 rich_help_panel=_DATA),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of every random choice (split, order, negatives).",
                             rich_help_panel=_RUN),
    workers: Optional[int] = typer.Option(
        None, "--workers", metavar="N", callback=at_least(1), rich_help_panel=_RUN, show_default=False,
        help="Decoding threads. Default: one per core (1–8), on the CPU as well (each training tuple "
        "is 12 photos to decode)."),
    amp: bool = typer.Option(True, "--amp/--no-amp", help="Mixed precision on CUDA.", rich_help_panel=_RUN),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout.", rich_help_panel=_RUN),
) -> None:
    """Train NetVLAD on your own GPS-tagged photos into a model file for `--model`.

    GPS is the only supervision: photos within --pos-radius of each other may show the same place, photos beyond --neg-radius do not. Whole areas are held out to measure recall@1/5/10 at 25 m after each epoch; the best epoch is kept. Ctrl-C saves a checkpoint; --resume continues it. A finished run leaves none: run it again as it is, or start from its model with --base FILE.
    """  # noqa: E501 (paragraphs on one line each: --help wraps them, a line break would stay)
    from geoloc import console
    from geoloc.errors import PhotoError, UsageError
    from geoloc.training.data import photos_from_database, photos_from_paths
    from geoloc.training.checkpoint import check_run
    from geoloc.training.finetune import FinetuneConfig, finetune as run_finetune

    if out is None:
        raise UsageError("--out FILE is required: the model file to write (.safetensors)")
    if paths and db is not None:
        raise UsageError("give photos (PATH...) or --db, not both")
    # Before the photos are read (their EXIF, one by one, can take minutes): an --out that
    # cannot be written, or a checkpoint that contradicts --resume/--restart, fails now.
    out = check_run(out, resume=resume, restart=restart)
    config = FinetuneConfig(
        base=base, epochs=epochs, device=device, train_layers=train_layers, pos_radius_m=pos_radius,
        neg_radius_m=neg_radius, margin=margin, lr=lr, momentum=momentum, weight_decay=weight_decay,
        lr_step=lr_step, lr_gamma=lr_gamma,
        batch_size=batch_size, n_neg=negatives, neg_sample=neg_sample, cache_refresh=cache_refresh,
        val_fraction=val_fraction, val_cell_m=val_cell, patience=patience, seed=seed, max_side=max_side,
        num_clusters=num_clusters, pca=pca, amp=amp,
    )
    if workers is not None:
        config.workers = workers
    config.check()

    errors: list[PhotoError] = []

    def on_error(exc: PhotoError) -> None:
        errors.append(exc)
        console.warn(str(exc))

    if paths:
        photos, unlocated = photos_from_paths(paths, on_error)
        source = count(len(paths), "path")
    else:
        db_path = resolve_db(db)
        photos, unlocated = photos_from_database(db_path, on_error)
        source = f"database {db_path}"
    console.info(f"{len(photos)} GPS-tagged photos from {source}"
                 + (f" ({unlocated} without a position ignored)" if unlocated else ""))

    from geoloc.console import RichProgress

    reporter = RichProgress(transient=True, announce=True)
    try:
        result = run_finetune(photos, out, config, resume=resume, restart=restart, reporter=reporter)
    finally:
        reporter.close()

    summary = result.to_json()
    summary["skipped"] = [{"path": str(e.path), "reason": e.reason} for e in errors] + summary["skipped"]
    if json_out:
        console.print_json(summary)
    recall = result.recall
    console.info(
        f"wrote {result.out} ({result.dim}-D, best epoch {result.best_epoch} of {result.epochs_run}"
        + (", stopped early" if result.stopped_early else "")
        + (": no epoch did better than the starting model, which is what was written"
           if result.best_epoch == 0 else "")
        + (f", validation recall@1/5/10 {recall['1']:.2f}/{recall['5']:.2f}/{recall['10']:.2f} "
           f"on {result.val_queries} held-out photos" if recall else ", not validated")
        + f"); use it with: geoloc index PATH --model {result.out}"
    )
