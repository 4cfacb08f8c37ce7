"""`geoloc review`: a local page to check, correct and accept positions before anything is written."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from geoloc.cli.root import app
from geoloc.cli._common import DB_HELP, handle_errors, note_verifier_fallback, resolve_db

_HELP = (
    "Check, correct and accept estimated positions on a local web page, then write them.\n\n"
    "The page (served on 127.0.0.1, its URL with a secret token printed on stderr) shows each photo "
    "beside its best matches, the estimate on a map (drag the pin to correct it), and takes accept / "
    "reject per photo (keys a, r, j, k) or in bulk. Nothing is written until you press Apply: then "
    "EXIF GPS (undo with `geoloc undo-exif`) and/or XMP sidecars. Decisions are kept with the "
    "database: stop with Ctrl-C and run the same command again to resume."
)


@app.command("review", help=_HELP,
             epilog="Examples:\ngeoloc review --unlocated\ngeoloc review 'trip/*.jpg' --no-browser --port 8765")
@handle_errors
def review_command(
    queries: Optional[List[Path]] = typer.Argument(
        None, metavar="QUERY", help="Photos, folders or globs to review (quote globs to let geoloc expand them)."),
    db: Optional[Path] = typer.Option(None, "--db", metavar="DB", help=DB_HELP),
    unlocated: bool = typer.Option(False, "--unlocated", help="Review every photo of the database without GPS."),
    port: int = typer.Option(0, "--port", metavar="N", help="Port on 127.0.0.1 (default: a free one).",
                             show_default=False),
    no_browser: bool = typer.Option(False, "--no-browser", help="Only print the page's URL; open no browser."),
    again: bool = typer.Option(False, "--again", help="Also show photos rejected or written in an earlier review."),
    xmp: bool = typer.Option(False, "--xmp", help="Tick 'XMP sidecar' on the page (Apply writes photo.xmp)."),
    no_exif: bool = typer.Option(False, "--no-exif", help="Untick 'EXIF' on the page (Apply writes no EXIF)."),
    xmp_name: str = typer.Option("stem", "--xmp-name", metavar="stem|full",
                                 help="Sidecar file name: stem = photo.xmp, full = photo.jpg.xmp."),
) -> None:
    from geoloc import console
    from geoloc.errors import GeolocError, UsageError
    from geoloc.files import display_path

    if not queries and not unlocated:
        raise UsageError("give at least one QUERY (photo, folder or glob), or --unlocated")
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: choose 1–65535 (or leave it out for a free port)")
    from geoloc.outputs.export import SIDECAR_NAMINGS

    if xmp_name not in SIDECAR_NAMINGS:
        raise UsageError(f"--xmp-name {xmp_name}: choose one of {', '.join(SIDECAR_NAMINGS)}")
    db_path = resolve_db(db)
    if not no_exif:
        from geoloc.photos.gpswrite import find_backend

        find_backend()  # no EXIF writer installed: say so now, not after the review
    from geoloc.console import RichProgress
    from geoloc.photos.discovery import expand_queries
    from geoloc.review.run import serve_review
    from geoloc.review.session import locate_for_review

    note_verifier_fallback()  # review locates with the default verifier

    slots = expand_queries(queries or [])
    paths = [p for kind, p in slots if kind == "path"]
    for kind, p in slots:
        if kind != "path":
            console.warn(str(p))
    progress = RichProgress(transient=True, bars=True)
    try:
        results = locate_for_review(db_path, paths, unlocated, on_progress=progress.advance,
                                    on_total=lambda n: progress.stage("Locating", n))
    finally:
        progress.close()
    for r in results:
        if r.error:
            console.warn(r.error)
    if not results:
        raise GeolocError(f"nothing to review: database {display_path(db_path)} has no photo without GPS")
    if not any(r.estimate for r in results):
        raise GeolocError("nothing to review: no photo could be located")
    serve_review(db_path, results, port=port, again=again, open_browser=not no_browser,
                 apply_options={"exif": not no_exif, "xmp": xmp, "xmp_name": xmp_name},
                 say=lambda line: typer.echo(line, err=True))  # a URL must not be wrapped
