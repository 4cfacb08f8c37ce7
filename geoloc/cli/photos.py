"""`geoloc photos`: list what a database holds, e.g. the photos it could not place (unlocated).

`geoloc index` only counts unlocated photos; a user's next question is "which ones, and why?".
This command answers it without indexing anything and without a lock, so it also works while
`geoloc index` runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from geoloc.cli.root import app
from geoloc.cli._common import DB_HELP, handle_errors

_HELP = (
    "List the photos in the database, with their stored position and where it came from "
    "(the photo's EXIF or embedded XMP, an XMP sidecar or a Google Takeout JSON).\n\n"
    "--unlocated lists only the photos without a usable GPS position, with the reason read "
    "from their EXIF and sidecars now (e.g. \"no GPS data\").\n\n"
    "`geoloc locate --unlocated` can place them."
)

CSV_COLUMNS = ("path", "lat", "lon", "alt", "taken_at", "gps_accuracy_m", "width", "height",
               "reason", "gps_source")


@app.command("photos", help=_HELP)
@handle_errors
def photos(
    db: Optional[Path] = typer.Option(None, "--db", metavar="DB", help=DB_HELP, show_default=False),
    unlocated: bool = typer.Option(False, "--unlocated", help="Only photos without a position."),
    located: bool = typer.Option(False, "--located", help="Only photos with a position."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list on stdout."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV on stdout."),
) -> None:
    """Thin: database → records (→ reasons) → lines, JSON or CSV (help text in _HELP)."""
    from geoloc.cli._common import one_format, resolve_db, warn_mirror_damage
    from geoloc.database import Database
    from geoloc.errors import UsageError

    fmt = one_format(json=as_json, csv=as_csv)
    if located and unlocated:
        raise UsageError("choose --located or --unlocated, not both")
    with Database.open(resolve_db(db)) as database:
        warn_mirror_damage(database)
        records = database.photos(located_only=located)
    if unlocated:
        records = [r for r in records if not r.located]
    records.sort(key=lambda r: r.path)
    rows = [_row(r) for r in records]
    if fmt == "json":
        from geoloc.console import print_json

        print_json(rows)
    elif fmt == "csv":
        import csv

        from geoloc.console import data_out

        writer = csv.DictWriter(data_out(), fieldnames=CSV_COLUMNS, extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        _print_lines(rows)


_SOURCE_NAMES = {"xmp-embedded": "embedded XMP", "xmp": "XMP sidecar", "takeout": "Google Takeout JSON"}


def _row(record) -> dict:
    """A record as JSON, plus ``reason``: why an unlocated photo has no position (else None).

    The reason is not stored; it is read again from the file's EXIF and sidecars (no pixels
    decoded, about a millisecond), so it also tells when a file has gone or gained a position
    since.
    """
    from geoloc.errors import PhotoError
    from geoloc.photos import read_meta

    data = record.to_json()
    data.pop("row", None)
    data.pop("size", None)
    data.pop("mtime_ns", None)
    reason = None
    if not record.located:
        try:
            meta = read_meta(record.path)
            if not meta.located:
                reason = meta.no_position_reason
            elif meta.gps_source == "exif":
                reason = "the file has a position now; run `geoloc index` to store it"
            else:
                reason = (f"its {_SOURCE_NAMES.get(meta.gps_source, meta.gps_source)} has a position "
                          "now; run `geoloc index` to store it")
        except PhotoError as exc:
            reason = exc.reason
    data["reason"] = reason
    return data


def _print_lines(rows: list[dict]) -> None:
    """For people: one photo per line, then a count on stderr (so `| wc -l` stays exact).

    A name that holds a tab, a newline, a terminal escape or bytes that are not UTF-8 is shown
    quoted, with those characters escaped: one photo stays one line, and no name can act on
    the terminal. (``--json`` and ``--csv`` carry names exactly.)
    """
    import sys

    from geoloc import console
    from geoloc.files import display_path

    for row in rows:
        name = display_path(row["path"])
        if name != row["path"]:
            name = '"' + name.replace('"', '\\"') + '"'
        if row["located"]:
            where = f"{row['lat']:.6f}, {row['lon']:.6f}"
            if row.get("gps_source") not in (None, "exif"):
                where += f" (from its {_SOURCE_NAMES.get(row['gps_source'], row['gps_source'])})"
        else:
            where = f"unlocated: {display_path(row['reason'] or 'no position')}"
        sys.stdout.write(f"{name}\t{where}\n")
    sys.stdout.flush()
    located = sum(1 for r in rows if r["located"])
    noun = "photo" if len(rows) == 1 else "photos"
    console.info(f"{len(rows)} {noun}: {located} located, {len(rows) - located} unlocated")
