"""`geoloc undo-exif`: put back the GPS of the photos a `locate --write-exif` run wrote into."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from geoloc.formatting import count
from geoloc.cli.root import app
from geoloc.cli._common import handle_errors

_HELP = (
    "Put back the GPS tags of the photos `geoloc locate --write-exif` wrote into.\n\n"
    "Each photo gets its GPS tags back as they were (pixels untouched, atomically); a photo "
    "edited since is left alone and named."
    "\n\nWithout JOURNAL: the latest run not yet undone. Journals are in $GEOLOC_HOME/undo."
)


@app.command("undo-exif", help=_HELP, epilog="Examples:\ngeoloc undo-exif\ngeoloc undo-exif --list")
@handle_errors
def undo_exif(
    journal: Optional[Path] = typer.Argument(
        None, metavar="JOURNAL", help="An undo journal (a file, or its name as --list shows it).",
        show_default=False),
    list_runs: bool = typer.Option(False, "--list", help="List the runs that wrote into photos, newest last."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON on stdout."),
) -> None:
    """Thin: journal → writeback.undo_run → one summary line (help text in _HELP)."""
    from geoloc import console
    from geoloc.files import display_path, json_path, json_path_fields

    if list_runs:
        _list(as_json)
        return
    from geoloc.console import RichProgress
    from geoloc.outputs.undo_journal import read_journal
    from geoloc.outputs.writeback import latest_journal, undo_run

    path = _resolve(journal) if journal is not None else latest_journal()
    entries = len(read_journal(path).entries)
    progress = RichProgress(transient=True, bars=entries > 1)
    progress.stage("Undoing", entries)
    try:
        report = undo_run(path, on_progress=progress.advance)
    finally:
        progress.close()
    for photo in report.changed:
        console.warn(f"{display_path(photo)}: changed since geoloc wrote its GPS; left as it is")
    for photo in report.missing:
        console.warn(f"{display_path(photo)}: no longer exists; nothing to undo")
    for photo, reason in report.failed:
        console.warn(f"{display_path(photo)}: not undone: {reason}")
    if as_json:
        console.print_json({
            "journal": json_path(path), "complete": report.complete,
            "restored": [json_path(p) for p in report.restored], "already": [json_path(p) for p in report.already],
            "changed": [json_path(p) for p in report.changed], "missing": [json_path(p) for p in report.missing],
            "failed": [{**json_path_fields(p), "reason": r} for p, r in report.failed],
        })
    n = len(report.restored)
    extra = f", {len(report.already)} already as they were" if report.already else ""
    console.info(f"GPS put back in {count(n, 'photo')}{extra} (journal {display_path(path)})")
    if not report.complete:
        if report.closed:
            console.info(f"this run is closed ({count(report.left_alone, 'photo')} left unchanged); "
                         "`geoloc undo-exif` now goes on with the run before it")
        raise typer.Exit(1)


def _resolve(journal: Path) -> Path:
    """A journal named on the command line; one that is not there is a runtime error (exit 1),
    as a missing photo or database is, and as a file that is not a journal is."""
    from geoloc.errors import GeolocError
    from geoloc.files import display_path
    from geoloc.outputs.undo_journal import SUFFIX, undo_dir

    for candidate in (journal, undo_dir() / journal, undo_dir() / f"{journal}{SUFFIX}"):
        if candidate.is_file():
            return candidate
    raise GeolocError(f"{display_path(journal)}: no such undo journal (`geoloc undo-exif --list` lists them)")


def _list(as_json: bool) -> None:
    from geoloc import console
    from geoloc.errors import GeolocError
    from geoloc.files import display_path, json_path
    from geoloc.outputs.undo_journal import journals, read_journal

    runs = []
    for path in journals():
        try:
            runs.append(read_journal(path))
        except GeolocError as exc:
            console.warn(str(exc))
    if as_json:
        console.print_json([{"journal": json_path(i.path), "name": i.name, "created": i.created,
                             "backend": i.backend, "photos": len(i.entries), "undone": i.undone,
                             "left_alone": i.left_alone} for i in runs])
        return
    if not runs:
        console.info("no `geoloc locate --write-exif` run has written into a photo")
        return
    out = console.out_console()  # the listing is the command's result: stdout, as `geoloc photos`'s
    for i in runs:
        state = ("undone" + (f" ({count(i.left_alone, 'photo')} left unchanged)" if i.left_alone else "")
                 if i.undone else "can be undone")
        out.print(f"{i.name}  {i.created}  {count(len(i.entries), 'photo')}  {i.backend}  {state}  ({display_path(i.path)})",
                  markup=False)
