"""`geoloc clocks`: each camera of a database, how far its clock is off UTC, and how that is known."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from geoloc.cli.root import app
from geoloc.cli._common import DB_HELP, cell, handle_errors
from geoloc.cli._trips import CLOCK_HELP

_HELP = (
    "List each camera of the database and how far its clock runs ahead of UTC.\n\n"
    "Solved from the camera's photos that carry a GPS time stamp, the zone it wrote with its times, "
    "or (a guess) the time zone of where its photos were. Locate also aligns the photos it places "
    "from their pixels with the trip. An offset geoloc cannot know is unknown: set it with "
    "--clock CAMERA=±HH:MM:SS on locate. Reads only."
)


@app.command("clocks", help=_HELP)
@handle_errors
def clocks_command(
    db: Optional[Path] = typer.Option(None, "--db", metavar="DB", help=DB_HELP, show_default=False),
    clock: Optional[List[str]] = typer.Option(None, "--clock", metavar="CAMERA=±HH:MM:SS", help=CLOCK_HELP,
                                              show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list, one object per camera."),
) -> None:
    """Thin: database → trips.clocks.solve → table or JSON."""
    from geoloc import console
    from geoloc.cli._common import resolve_db
    from geoloc.cli._trips import trip_config, warn_unknown_clocks
    from geoloc.database import Database
    from geoloc.trips.clocks import shots_from_records, solve

    config = trip_config(None, clock, None)
    path = resolve_db(db)
    with Database.open(path) as database:
        records = database.photos()
    solved = solve(shots_from_records(records), config.clocks)
    warn_unknown_clocks(config.clocks, solved)
    rows = sorted(solved.values(), key=lambda c: c.camera.name.lower())
    if as_json:
        console.print_json([c.to_json() for c in rows])
        return
    if not rows:
        console.info(f"no photo of {path} carries a capture time: no camera clock to tell")
        return
    _print_table(rows)


def _print_table(rows) -> None:
    from rich.table import Table

    from geoloc import console
    from geoloc.trips.times import format_offset

    table = Table(title="Camera clocks (ahead of UTC)", title_justify="left")
    for name, justify in (("camera", "left"), ("offset", "right"), ("source", "left"), ("photos", "right"),
                          ("note", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    for c in rows:
        spread = f" ±{c.spread_s:.0f} s" if c.spread_s is not None and c.offset_s is not None else ""
        table.add_row(cell(c.camera.name), cell(format_offset(c.offset_s) + spread), cell(c.source),
                      str(c.photos), cell(c.note or ""))
    console.out_console().print(table)
