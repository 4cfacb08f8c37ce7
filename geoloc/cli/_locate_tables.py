"""``geoloc locate``'s tables for people: one summary row per query, and the candidates of a
single query, readable at 80 columns (names cut from the left, one path style per table)."""

from __future__ import annotations

import os

from geoloc.files import common_folder, display_path, printable
from geoloc.formatting import coordinate_digits, format_distance


_CONFIDENCE_STYLE = {"high": "green", "medium": "yellow", "low": "red"}


def print_tables(results, to_stderr: bool = False) -> None:
    """For people: one summary row per query; the candidates too when there is one query.

    Each table names its photos one way: relative to the folder they share, given once in its
    title (absolute when they share none), cut from the left when the column is narrow. A
    ``low`` estimate shows no coordinates: it rests on no reliable match, and six decimals would
    pose as a position (the candidates table and the warnings say what is known). On stderr when
    the map is what stdout carries.
    """
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from geoloc import console
    from geoloc.console import PathCell

    out = console.err if to_stderr else console.out_console()
    if all(r.error for r in results):  # nothing but errors: stderr says each, a table adds nothing
        return
    with_truth = any(r.query_gps for r in results)
    folder, names = _short_names([r.query for r in results])
    title = _title("geoloc locate", folder, out.width)
    # Numbers never wrap or get cut; the query column takes what is left. (How many candidates
    # agree is in the JSON and the map; "confidence" sums it up here.)
    table = Table(title=title, title_justify="left", pad_edge=False)
    table.add_column("query", min_width=PathCell.MIN)
    for header in ("latitude", "longitude", "radius", "score"):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("confidence", no_wrap=True)
    if with_truth:
        table.add_column("error", justify="right", no_wrap=True)
    for r, name in zip(results, names):
        e = r.estimate
        if e is None:
            # The reason goes under the name, where the text can wrap; the numbers stay empty.
            reason = r.error or "no estimate"
            for prefix in (f"{r.query}: ", f"{display_path(r.query)}: "):
                reason = reason.removeprefix(prefix)
            row = [Group(PathCell(name), Text(printable(reason), style="red")), "–", "–", "", "", ""]
        elif e.confidence == "low":
            row = [Group(PathCell(name), Text("no reliable match", style="yellow")), "–", "–", "–",
                   _score(r), Text(e.confidence, style=_CONFIDENCE_STYLE["low"])]
        else:
            digits = coordinate_digits(e.radius_m)
            row = [PathCell(name), f"{e.lat:.{digits}f}", f"{e.lon:.{digits}f}", format_distance(e.radius_m),
                   _score(r), Text(e.confidence, style=_CONFIDENCE_STYLE.get(e.confidence, ""))]
        if with_truth:
            row.append(format_distance(r.error_m))
        table.add_row(*row)
    out.print(table)
    if len(results) == 1 and results[0].candidates:
        cands, note = _candidates_table(results[0], out.width)
        out.print(cands)
    else:
        note = "score: the best candidate's cosine similarity (1: the same view)"
    out.print(Text(note, style="dim"), soft_wrap=False)  # wrapped at word boundaries


_COSINE_NOTE = "score: cosine similarity of the descriptors (1: the same view); it sets the order."
_CANDIDATES_NOTE = ("score: cosine similarity of the descriptors (1: the same view). verified: the score "
                    "plus a bonus for the features a candidate shares with the photo in one consistent "
                    "layout; it sets the order (– : not checked, ranked after).")


def _candidates_table(r, width: int):
    """One query's candidates in their final order, with what ordered them: the re-ranking's
    ``verified`` score where geometric verification ran, else the cosine ``score``; and the
    note that says which."""
    from rich.table import Table

    from geoloc.console import PathCell

    verified = any(c.fused is not None for c in r.candidates)
    folder, names = _short_names([c.path for c in r.candidates])
    title = _title("candidates", folder, width)
    cands = Table(title=title, title_justify="left", pad_edge=False)
    cands.add_column("#", justify="right", no_wrap=True)
    for header in ("score", "verified")[:2 if verified else 1] + ("from estimate", "latitude", "longitude"):
        cands.add_column(header, justify="right", no_wrap=True)
    cands.add_column("photo", min_width=PathCell.MIN)
    for c, name in zip(r.candidates, names):
        row = [str(c.rank), f"{c.score:.3f}"]
        if verified:
            row.append("–" if c.fused is None else f"{c.fused:.3f}")
        row += [format_distance(c.distance_m), f"{c.lat:.6f}", f"{c.lon:.6f}", PathCell(name)]
        cands.add_row(*row)
    return cands, _CANDIDATES_NOTE if verified else _COSINE_NOTE


def _title(head: str, folder: str | None, width: int):
    """A table's title on one line: the folder its names are relative to, cut from the left."""
    from rich.text import Text

    from geoloc.console import shorten_left

    if not folder:
        return Text(head)
    head += " — in "
    return Text(head + shorten_left(printable(display_path(folder)), max(width - len(head), 12)))


def _score(result) -> str:
    return f"{result.candidates[0].score:.3f}" if result.candidates else "–"


def _short_names(paths) -> tuple[str | None, list[str]]:
    """(the folder the paths share or None, each path relative to it, else as given)."""
    folder = common_folder(paths)
    return folder, [display_path(os.path.relpath(p, folder) if folder else p) for p in paths]
