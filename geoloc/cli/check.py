"""`geoloc check`: is this database sound? Every file against the others and its checksums."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from geoloc.formatting import count
from geoloc.cli.root import app
from geoloc.cli._common import DB_HELP, handle_errors

_HELP = (
    "Verify a database: its files against each other, SQLite's own integrity check, every "
    "stored descriptor against its checksum.\n\nExit 0 when it is sound; 1 with one line per "
    "problem otherwise. Reads only; `geoloc index --repair` rebuilds what can be rebuilt."
)


@app.command("check", help=_HELP)
@handle_errors
def check(
    db: Optional[Path] = typer.Option(None, "--db", metavar="DB", help=DB_HELP, show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print the verdict as JSON on stdout."),
) -> None:
    """Thin: database → integrity.check → lines or JSON (help text in _HELP)."""
    from geoloc import console
    from geoloc.cli._common import resolve_db
    from geoloc.database import Database
    from geoloc.database.check import check as run_check
    from geoloc.descriptors.database_model import model_file_problem
    from geoloc.errors import DatabaseError
    from geoloc.files import display_path

    path = resolve_db(db)
    if not Database.exists(path):
        raise DatabaseError(f"no geoloc database at {display_path(path)} (run `geoloc index` first)")
    report = run_check(path)
    others = len(report.problems)
    model = model_file_problem(report.manifest)
    if model:
        report.problems.append(model)
    if as_json:
        console.print_json(report.to_json())
    where = f"database {display_path(report.db)}"
    if report.sound:
        if not as_json:
            verified = (f"{report.verified} descriptors verified" if report.checksums
                        else "no checksums to verify (made by geoloc 0.1.0; any `geoloc index` run adds them)")
            extra = f"; {count(report.unreferenced, 'unreferenced row')}" if report.unreferenced else ""
            console.info(f"{where} is sound: {count(report.photos, 'photo')} ({report.located} located), {verified}{extra}")
        return
    for problem in report.problems:
        console.error(f"{where}: {problem}")
    if not as_json and others:
        console.info(f"repair: geoloc index PHOTOS... --repair --db {display_path(report.db)}")
    raise typer.Exit(1)
