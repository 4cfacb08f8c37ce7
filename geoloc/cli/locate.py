"""`geoloc locate`: where was this photo taken, how sure are we, and which photos say so."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from geoloc.cli.root import app
from geoloc.cli._common import (BATCH_HELP, DB_HELP, PRECISION_HELP, VERIFIER_HELP, at_least, handle_errors,
                                note_verifier_fallback, one_format,
                                resolve_db, warn_mirror_damage)
from geoloc.cli._trips import CLOCK_HELP, EVIDENCE_HELP, SEQUENCE_HELP, TRACK_HELP, apply_trips, trip_config
from geoloc.files import check_writable, display_path
from geoloc.formatting import count



@app.command(
    "locate",
    # One example a line (Rich keeps single line breaks in an epilogue).
    epilog="Examples:\ngeoloc locate photo.jpg --map where.html\ngeoloc locate 'trip/*.jpg' --json\n"
    "geoloc locate --unlocated --xmp",
)
@handle_errors
def locate_command(
    queries: Optional[List[Path]] = typer.Argument(
        None, metavar="QUERY", help="Photos, folders or globs (quote globs to let geoloc expand them)."
    ),
    db: Optional[Path] = typer.Option(None, "--db", metavar="DB", help=DB_HELP),
    top_k: int = typer.Option(10, "--top-k", "-k", callback=at_least(1), metavar="K", help="Candidates to list per query."),
    map_file: Optional[Path] = typer.Option(
        None, "--map", metavar="FILE",
        help="Write an HTML map (estimates, uncertainty circles, candidates, a table of the answers) to FILE: "
        "one file that opens offline; only its map tiles come from the network."
    ),
    no_thumbnails: bool = typer.Option(
        False, "--no-thumbnails", help="With --map: embed no photo thumbnails in the map."
    ),
    relative_paths: bool = typer.Option(
        False, "--relative-paths", help="With --map: show paths relative to the map file's folder."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list, one object per query."),
    as_csv: bool = typer.Option(
        False, "--csv", help="Print CSV for exiftool: SourceFile, signed GPSLatitude/GPSLongitude, radius, score."
    ),
    csv_safe: bool = typer.Option(
        False, "--csv-safe",
        help="With --csv: start a file name a spreadsheet would run as a formula (=, +, -, @) with ' "
        "(for spreadsheets: exiftool then finds no such file)."),
    as_geojson: bool = typer.Option(False, "--geojson", help="Print an RFC 7946 GeoJSON FeatureCollection."),
    as_gpx: bool = typer.Option(False, "--gpx", help="Print GPX 1.1: one waypoint per estimate."),
    xmp: bool = typer.Option(
        False, "--xmp", help="Write an XMP sidecar (photo.xmp) next to each located photo without GPS."
    ),
    write_exif: bool = typer.Option(
        False, "--write-exif",
        help="Write the estimate into each photo's own EXIF GPS, where it has none: pixels untouched, "
        "atomic, with an undo record (geoloc undo-exif). Needs exiftool or pyexiv2."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="With --write-exif: replace GPS the photo already has (kept in the undo record)."
    ),
    min_confidence: Optional[str] = typer.Option(
        None, "--min-confidence", metavar="low|medium|high",
        help="Write only estimates at least this sure: default high for --xmp, --write-exif and --csv "
        "(exiftool's import), low (all) for --geojson and --gpx (maps)."),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="List every flagged estimate and every photo left out, one line each."
    ),
    xmp_name: str = typer.Option(
        "stem",
        "--xmp-name",
        metavar="stem|full",
        help="Sidecar file name: stem = photo.xmp (exiftool, Lightroom), full = photo.jpg.xmp (darktable, digiKam).",
    ),
    unlocated: bool = typer.Option(
        False, "--unlocated", help="Also locate every photo of the database that has no GPS of its own."
    ),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda or mps."),
    batch_size: int | None = typer.Option(None, "--batch-size", callback=at_least(1), metavar="N", help=BATCH_HELP,
                                             show_default=False),
    precision: str = typer.Option("auto", "--precision", metavar="PRECISION", help=PRECISION_HELP),
    no_rerank: bool = typer.Option(
        False, "--no-rerank",
        help="Keep the global search's order: no re-ranking of the top candidates by geometric "
        "verification."),
    rerank: bool = typer.Option(False, "--rerank", hidden=True, help="Re-rank (the default)."),
    rerank_top: int = typer.Option(20, "--rerank-top", callback=at_least(1), metavar="N", help="Candidates verified per query."),
    verifier: Optional[str] = typer.Option(None, "--verifier", metavar="NAME", help=VERIFIER_HELP, show_default=False),
    track: Optional[List[Path]] = typer.Option(None, "--track", metavar="FILE", help=TRACK_HELP,
                                               show_default=False),
    clock: Optional[List[str]] = typer.Option(None, "--clock", metavar="CAMERA=±HH:MM:SS", help=CLOCK_HELP,
                                              show_default=False),
    evidence: Optional[str] = typer.Option(None, "--evidence", metavar="KINDS", help=EVIDENCE_HELP,
                                           show_default=False),
    sequence: bool = typer.Option(False, "--sequence", help=SEQUENCE_HELP),
) -> None:
    """Estimate where photos were taken, with an uncertainty radius and the matching photos."""
    from geoloc import console
    from geoloc.errors import GeolocError, NoLocatedPhotosError, UsageError
    from geoloc.trips.evidence import kept_tracks

    fmt = one_format(json=as_json, csv=as_csv, geojson=as_geojson, gpx=as_gpx)
    map_on_stdout = map_file is not None and _writes_stdout(map_file)
    if map_on_stdout and fmt is not None:
        raise UsageError(f"--map {map_file} and --{fmt} would both go to stdout: write the map to a file")
    from geoloc.locating.estimate import CONFIDENCE_LEVELS
    from geoloc.outputs.export import SIDECAR_NAMINGS

    if xmp_name not in SIDECAR_NAMINGS:
        raise UsageError(f"--xmp-name {xmp_name}: choose one of {', '.join(SIDECAR_NAMINGS)}")
    if min_confidence is not None and min_confidence not in CONFIDENCE_LEVELS:
        raise UsageError(f"--min-confidence {min_confidence}: choose one of {', '.join(CONFIDENCE_LEVELS)}")
    if min_confidence is not None and not (xmp or write_exif or fmt in _GATED_FORMATS):
        raise UsageError("--min-confidence applies to what is written: add --xmp, --write-exif, --csv, "
                         "--geojson or --gpx")
    if overwrite and not write_exif:
        raise UsageError("--overwrite only applies to --write-exif")
    if csv_safe and fmt != "csv":
        raise UsageError("--csv-safe only applies to --csv")
    if write_exif:
        from geoloc.photos.gpswrite import find_backend

        find_backend()  # no writer installed: say so now, before minutes of locating
    if not queries and not unlocated:
        raise UsageError("give at least one QUERY (photo, folder or glob), or --unlocated")
    db_path = resolve_db(db)
    if map_file is None:
        for flag, given in (("--no-thumbnails", no_thumbnails), ("--relative-paths", relative_paths)):
            if given:
                raise UsageError(f"{flag} only applies to a map: add --map FILE")
    else:
        check_writable(map_file, "map")

    # Everything above is instant; the heavy imports start here.
    from geoloc.locating.locator import LocateConfig
    from geoloc.retrieval.rerank import RerankConfig

    if rerank and no_rerank:
        raise UsageError("choose --rerank or --no-rerank, not both")
    config = LocateConfig(top_k=top_k, device=device, batch_size=batch_size, precision=precision,
                          rerank=RerankConfig(enabled=not no_rerank, top=rerank_top,
                                              **({"verifier": verifier} if verifier else {})))
    if verifier is None and not no_rerank:
        note_verifier_fallback()
    trips = trip_config(track, clock, evidence, sequence)
    from geoloc.photos.discovery import expand_queries

    slots = expand_queries(queries or [])
    try:
        results = _locate_all(db_path, list(slots), unlocated, config)
    except NoLocatedPhotosError:
        if not (trips.uses("track") and (trips.tracks or kept_tracks(db_path))):
            raise
        console.info(f"database {display_path(db_path)} has no GPS-tagged photo: placing by time on the tracks alone")
        results = _time_only(db_path, slots, unlocated)
    apply_trips(results, db_path, trips)
    _report_warnings(results, verbose)
    _print_results(results, fmt, min_confidence or ("high" if fmt == "csv" else "low"), verbose, csv_safe,
                   tables_to_stderr=map_on_stdout)

    if xmp:
        _write_sidecars(results, xmp_name, min_confidence or "high", verbose)
    if write_exif:
        _write_exif(results, min_confidence or "high", overwrite, verbose)
    if map_file is not None and any(r.estimate for r in results):
        from geoloc.outputs.mapview import MapConfig, save_map

        map_file = map_file.expanduser() if str(map_file) != "-" else map_file
        config = MapConfig(relative_to=map_file.absolute().parent if relative_paths else None)
        if no_thumbnails:
            config.thumbnail_px = 0
        save_map(results, map_file, config)
        console.info(f"map written to {'stdout' if map_on_stdout else display_path(map_file)}")

    if results and not any(r.estimate for r in results):
        raise GeolocError(
            "no query could be located" if len(results) > 1
            else results[0].error or f"{results[0].query} could not be located"
        )


# ------------------------------------------------------------------------------------------------


def _time_only(db_path: Path, slots: list, unlocated: bool) -> list:
    """The answers :func:`_locate_all` gives, for a database without GPS-tagged photos: capture
    times only, for the tracks to place."""
    from geoloc.locating.results import LocateResult
    from geoloc.trips.evidence import time_only_results

    paths = [p for kind, p in slots if kind == "path"]
    timed = iter(time_only_results(db_path, paths, unlocated))
    answers = [next(timed) if kind == "path" else LocateResult(Path(p.path), error=str(p)) for kind, p in slots]
    return answers + list(timed)


def _locate_all(db_path: Path, slots: list, unlocated: bool, config) -> list:
    """One result per slot, in order: located photos, and the files that could not be read."""
    from geoloc import console
    from geoloc.console import RichProgress
    from geoloc.locating.locator import Locator
    from geoloc.locating.results import LocateResult

    with Locator(db_path, config) as locator:
        warn_mirror_damage(locator.database)
        if unlocated:
            extra = locator.unlocated_photos()
            known = {os.path.realpath(p) for kind, p in slots if kind == "path"}
            slots += [("path", p) for p in extra if os.path.realpath(p) not in known]
            if not extra:
                console.info(f"database {display_path(db_path)} has no photo without GPS")
        paths = [p for kind, p in slots if kind == "path"]
        if not slots:
            return []
        progress = RichProgress(transient=True, bars=len(paths) > 1)
        progress.stage("Locating", len(paths))
        try:
            located = iter(locator.locate(paths, on_progress=progress.advance))
        finally:
            progress.close()
    return [next(located) if kind == "path" else LocateResult(Path(p.path), error=str(p)) for kind, p in slots]


#: The stdout formats that carry positions to other tools, and so honour --min-confidence.
_GATED_FORMATS = ("csv", "geojson", "gpx")


def _report_warnings(results: list, verbose: bool) -> None:
    """Unreadable files one line each; the flags of the estimates one line each for a single
    query (or with ``--verbose``), else one line that counts them by kind."""
    from collections import Counter

    from geoloc import console

    kinds: Counter[str] = Counter()
    flagged = 0
    for r in results:
        if r.error and len(results) > 1:  # a single query's is the run's one error line
            console.warn(r.error)
        if r.warnings:
            flagged += 1
        for note in r.warnings:
            if verbose or len(results) == 1:
                console.warn(f"{display_path(r.query)}: {note}")
            kinds[_warning_kind(note, r)] += 1
    if flagged and not verbose and len(results) > 1:
        located = sum(1 for r in results if r.estimate is not None)
        parts = ", ".join(f"{kind}: {n}" for kind, n in kinds.most_common())
        # An estimate can carry several flags: then the flags are counted too, so that the
        # numbers in brackets add up to something the line states.
        flags = sum(kinds.values())
        total = f", {flags} flags in all" if flags != flagged else ""
        console.warn(f"{flagged} of {len([r for r in results if not r.error])} answers are flagged{total} ({parts}); "
                     "--verbose lists them, --json gives each its warnings")


def _warning_kind(note: str, result) -> str:
    """A flag's kind, the words before its colon ("no match", "candidates disagree"); a capture
    time that could not be used is one kind, and what re-ranking could not do (a candidate's file
    gone) another."""
    if result.estimate is not None and note in result.estimate.warnings:
        head = note.split(":", 1)[0]
        if len(head) <= 24:
            return head
    if note.startswith(("capture time not used", "not placed by time")):
        return "time not used"
    return "re-ranking notes"


def _say_below(below: list, minimum: str, where: str, verbose: bool) -> None:
    """One line: how many estimates were not written for their confidence, by level."""
    from collections import Counter

    from geoloc import console

    if not below:
        return
    if verbose:
        for r in below:
            console.info(f"{display_path(r.query)}: confidence {r.estimate.confidence}, below "
                         f"{minimum}: not written to {where}")
    levels = Counter(r.estimate.confidence for r in below)
    by_level = ", ".join(f"{levels[lv]} {lv}" for lv in ("medium", "low") if levels[lv])
    n = len(below)
    console.info(f"{count(n, 'estimate')} below confidence {minimum} left out of {where} "
                 f"({by_level}; --min-confidence sets the bar)")


def _writes_stdout(target: Path) -> bool:
    """``--map -`` or ``--map /dev/stdout``: the map is the data on stdout."""
    from geoloc.files import STDOUT, output_kind

    return str(target) == "-" or output_kind(target) == STDOUT


def _print_results(results: list, fmt: str | None, minimum: str = "low", verbose: bool = False,
                   csv_safe: bool = False, tables_to_stderr: bool = False) -> None:
    """The data format asked for on stdout, or the tables for people (on stderr when the map
    is what stdout carries)."""
    import sys

    from geoloc import console

    if fmt in _GATED_FORMATS:
        from geoloc.outputs.gate import confidence_gate

        results, below = confidence_gate(results, minimum)
        _say_below(below, minimum, f"the {fmt.upper() if fmt != 'geojson' else 'GeoJSON'}", verbose)
    if fmt == "json":
        console.print_json([r.to_json() for r in results])
    elif fmt == "csv":
        from geoloc.outputs.export import formula_like_names, write_csv

        write_csv(results, console.data_out(), spreadsheet_safe=csv_safe)
        risky = formula_like_names(results)
        if risky and not csv_safe:
            # exiftool needs the exact name, so it is written as it is; a spreadsheet would run it.
            console.warn(f"{count(risky, 'file name')} in the CSV {'starts' if risky == 1 else 'start'} "
                         "with =, +, - or @, which a spreadsheet runs as a formula; exiftool reads them "
                         "as they are, and --csv-safe writes them with a leading ' for spreadsheets")
    elif fmt == "geojson":
        from geoloc.outputs.export import write_geojson

        write_geojson(results, sys.stdout)
    elif fmt == "gpx":
        from geoloc.outputs.export import write_gpx

        write_gpx(results, console.data_out())
    else:
        from geoloc.cli._locate_tables import print_tables

        print_tables(results, to_stderr=tables_to_stderr)


def _write_sidecars(results, naming: str, minimum: str, verbose: bool) -> None:
    from geoloc import console
    from geoloc.outputs.export import OWN_GPS, write_sidecars
    from geoloc.outputs.gate import confidence_gate

    results, below = confidence_gate(results, minimum)
    report = write_sidecars(results, naming)
    own_gps = 0
    for photo, reason in report.skipped:
        if reason == OWN_GPS:
            own_gps += 1
            if verbose:
                console.info(f"{display_path(photo)}: {reason}; no sidecar written")
        else:
            console.warn(f"{display_path(photo)}: no sidecar written: {reason}")
    n = len(report.written)
    note = f" ({own_gps} with GPS of their own left alone)" if own_gps else ""
    console.info(f"{count(n, 'XMP sidecar')} written{note}")
    _say_below(below, minimum, "the sidecars", verbose)


def _write_exif(results, minimum: str, overwrite: bool, verbose: bool) -> None:
    from geoloc import console
    from geoloc.console import RichProgress
    from geoloc.outputs.writeback import WriteOptions, write_estimates

    located = [r for r in results if r.estimate is not None]  # write_estimates applies the bar
    progress = RichProgress(transient=True, bars=len(located) > 1)
    progress.stage("Writing EXIF", len(located))
    try:
        report = write_estimates(located, WriteOptions(min_confidence=minimum, overwrite=overwrite),
                                 on_progress=progress.advance)
    finally:
        progress.close()
    for photo, reason in report.failed:
        console.warn(f"{display_path(photo)}: EXIF not written: {reason}")
    for photo, reason in report.unwritable[: None if verbose else 3]:
        console.warn(f"{display_path(photo)}: EXIF not written: {reason}")
    if len(report.unwritable) > 3 and not verbose:
        console.warn(f"… and {len(report.unwritable) - 3} more photos in formats that are not written to "
                     "(--verbose lists them)")
    if verbose:
        for photo in report.own_position:
            console.info(f"{display_path(photo)}: has a position of its own; EXIF not written (--overwrite replaces it)")
    n = len(report.written)
    parts = [f"EXIF GPS written into {count(n, 'photo')} with {report.backend}"]
    if report.own_position:
        parts.append(f"{len(report.own_position)} with a position of their own left alone")
    if report.journal is not None:
        parts.append(f"undo with `geoloc undo-exif` (record: {display_path(report.journal)})")
    console.info("; ".join(parts))
    below = set(report.below)
    _say_below([r for r in located if Path(r.query) in below], minimum, "the photos", verbose)
