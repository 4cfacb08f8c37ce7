"""`geoloc index PATH...`: add photos to a database (incremental, crash-safe)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from geoloc.cli.root import app
from geoloc.cli._common import (BATCH_HELP, DB_HELP, PRECISION_HELP, WORKERS_HELP, at_least, handle_errors,
                                ray_config)


_HELP = (
    "Add the photos under each PATH to the database.\n\n"
    "Reads GPS, altitude, capture time and accuracy from EXIF and stores one descriptor per "
    "photo. Re-runs handle only new or changed photos; photos without a position are kept as "
    "\"unlocated\". Unreadable files get one warning line each and the run goes on. Safe to "
    "interrupt at any moment: a re-run picks up where it stopped."
)


@app.command("index", help=_HELP)
@handle_errors
def index(
    paths: Optional[List[Path]] = typer.Argument(None, metavar="PATH", show_default=False,
                                                 help="Photos, folders (searched recursively) or quoted globs ('trip/*.jpg')."),
    db: Optional[Path] = typer.Option(None, "--db", metavar="DB", help=DB_HELP, show_default=False),
    model: Optional[str] = typer.Option(
        None, "--model", metavar="NAME|FILE",
        help="Model for a new database (see `geoloc models`), or a model file. Default: "
        "netvlad-vgg16-pitts30k. An existing database keeps its model.", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print the run's summary as JSON on stdout."),
    prune: bool = typer.Option(
        False, "--prune", help="Drop photos under PATH whose files no longer exist."),
    no_maps: bool = typer.Option(
        False, "--no-maps",
        help="A new database without the verification maps that make re-ranking fast (about 180 KiB "
        "a photo at 640 px); re-ranking then computes them from the photo files."),
    repair: bool = typer.Option(
        False, "--repair", help="Rebuild what damage left rebuildable (a lost photos.sqlite, manifest "
        "or vocabulary; damaged descriptors) instead of refusing a damaged database; see `geoloc check`."),
    max_side: Optional[int] = typer.Option(
        None, "--max-side", callback=at_least(32), metavar="PIXELS",
        help="Longest side photos are resized to. Default: the model's (640 for the registry "
        "models); fixed when the database is created.", show_default=False),
    batch_size: int | None = typer.Option(None, "--batch-size", metavar="N", callback=at_least(1), help=BATCH_HELP,
                                             show_default=False),
    workers: Optional[int] = typer.Option(
        None, "--workers", metavar="N", callback=at_least(1), help=WORKERS_HELP, show_default=False),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda or mps."),
    precision: str = typer.Option("auto", "--precision", metavar="PRECISION", help=PRECISION_HELP),
    vocabulary_photos: int = typer.Option(
        300, "--vocabulary-photos", metavar="N", callback=at_least(1),
        help="Photos sampled to fit the vocabulary of a model that needs one (lite0-vlad), "
        "on the first run."),
    engine: str = typer.Option(
        "local", "--engine", metavar="local|ray",
        help="Where descriptors are computed: this process, or an actor pool on a Ray cluster (one "
        "model per actor; needs the extra geoloc\\[ray]). The database is the same either way."),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", metavar="ADDR",
        help="With --engine ray: the cluster's head, HOST:PORT (as ray start --head prints it), ray://HOST:PORT "
        "or auto. Default: a local Ray on this machine's cores.", show_default=False),
    ray_workers: Optional[int] = typer.Option(
        None, "--ray-workers", metavar="N", callback=at_least(1),
        help="With --engine ray: actors, each holding one model. Default: one per GPU of the cluster, "
        "else one per CPU.", show_default=False),
    refit: bool = typer.Option(
        False, "--refit",
        help="Fit the vocabulary again now, on a sample of every photo, and index every photo "
        "again (geoloc does it by itself when one fitted on few photos is outgrown)."),
    track: Optional[List[Path]] = typer.Option(
        None, "--track", metavar="FILE", show_default=False,
        help="A GPS track (GPX, KML/KMZ, Google Takeout location history) to keep with the database: "
        "every later `geoloc locate` places photos by time against it. Repeat for several."),
    quiet: bool = typer.Option(False, "--quiet", "-q",
                               help="No progress bar and no summary; warnings still show."),
) -> None:
    """Thin: options → IndexConfig → index_photos → summary/JSON (help text in _HELP)."""
    from geoloc.cli._common import resolve_db
    from geoloc.console import RichProgress
    from geoloc.indexing.run import IndexConfig, index_photos

    from geoloc.errors import GeolocError, UsageError

    if not paths and not (repair or refit):
        raise UsageError("give at least one PATH (a photo, a folder or a glob) to index")
    if refit and repair:
        raise UsageError("--refit and --repair do not go together: repair the database first, then refit")
    config = IndexConfig(model=model, max_side=max_side, batch_size=batch_size, workers=workers,
                         device=device, precision=precision, prune=prune, repair=repair, maps=not no_maps,
                         vocabulary_photos=vocabulary_photos, refit=refit, engine=engine,
                         ray=ray_config(engine, ray_address, ray_workers))
    tracks = [Path(t).expanduser() for t in track or []]
    if tracks:  # a file that is not a track is refused before an hour of indexing
        from geoloc import console
        from geoloc.files import display_path
        from geoloc.trips.evidence import cached_track

        for one in tracks:
            cached_track(one, console.warn)  # parsed (and cached) once, for keeping and every locate
        kept = resolve_db(db) / "tracks"
        if os.path.lexists(kept) and not kept.is_dir():
            raise GeolocError(f"cannot keep tracks with {display_path(resolve_db(db))}: {display_path(kept)} is a "
                              "file of yours, not geoloc's tracks folder; rename it and run again")
    progress = RichProgress(transient=False, rate="photos", bars=not quiet)
    try:
        report = index_photos(paths or [], resolve_db(db), config, progress)
    except (GeolocError, OSError) as exc:
        from geoloc.indexing.refit import full_disk_hint

        hint = full_disk_hint(resolve_db(db), exc)
        if hint is None:
            raise
        raise GeolocError(f"{exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}; {hint}") from None
    finally:
        progress.close()
    kept = []
    if tracks:
        from geoloc.trips.evidence import keep_tracks

        kept = keep_tracks(report.db, tracks)
    if not quiet:
        _print_summary(report)
        if kept:
            from geoloc import console
            from geoloc.formatting import count

            console.info(f"{count(len(kept), 'track')} kept with the database: `geoloc locate` uses "
                         f"{'them' if len(kept) > 1 else 'it'} from now on")
    if as_json:
        from geoloc.console import print_json
        from geoloc.files import json_path

        data = report.to_json()
        data["tracks"] = [json_path(p) for p in kept]
        print_json(data)


def _print_summary(report) -> None:
    """The run in a few rows on stderr; every user string is a Text, never parsed as markup."""
    from rich.table import Table
    from rich.text import Text

    from geoloc.console import err
    from geoloc.files import display_path
    from geoloc.indexing.repair import describe

    table = Table(title=Text(f"geoloc index → {display_path(report.db)}"), title_justify="left",
                  show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column()

    def row(label: str, value: str, note: str = "") -> None:
        table.add_row(Text(label), Text(value), Text(note))

    row("in the database", str(report.total), f"{report.located} located, {report.unlocated} unlocated")
    computed = report.refit.reextracted if report.refit is not None else report.indexed
    row("indexed", str(report.indexed), "new or changed")
    if report.refit is not None:
        row("refitted", str(report.refit.reextracted), "all photos computed again with the new vocabulary")
    row("unchanged", str(report.unchanged), "already current")
    if report.positions_updated:
        row("new positions", str(report.positions_updated), "from sidecars that appeared, changed or went")
    row("errors", str(report.errors), "files that could not be read" if report.errors else "")
    if report.removed:
        row("removed", str(report.removed), "files gone (--prune)")
    if report.repair is not None:
        row("repair", "", describe(report.repair))
    row("model", display_path(report.model),
        _vocabulary_note(report))
    # Photos over the whole run, start-up, vocabulary and writing included: what a user plans a
    # large run with. The bars above each keep their own phase's rate, which is higher.
    rate = computed / report.elapsed_s if report.elapsed_s > 0 else 0.0
    row("time", f"{report.elapsed_s:.1f} s",
        f"{rate:.1f} photos/s in all (bars: per phase)" if computed else "")
    err.print(table)


def _vocabulary_note(report) -> str:
    from geoloc.formatting import count

    n = report.vocabulary_photos
    on = f" ({count(n, 'photo')})" if n else ""
    if report.vocabulary == "refitted" and report.refit is not None:
        return f"vocabulary fitted again on {report.refit.after} photos (was {report.refit.before})"
    return {"fitted": f"vocabulary fitted on these photos{on}",
            "stored": f"vocabulary from the database{on}"}.get(report.vocabulary or "", "")
