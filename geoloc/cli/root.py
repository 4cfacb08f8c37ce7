"""The ``geoloc`` app every command registers on, built here once: the command modules and
the package's ``__init__`` import it from here, so no command module imports the package that
imports it (no import circle).
"""

from __future__ import annotations

from typing import Optional

import typer

from geoloc import __version__
from geoloc.cli._common import HelpGroup

app = typer.Typer(
    cls=HelpGroup,
    name="geoloc",
    help="Tell where a photo was taken by matching it against your own GPS-tagged photos (NetVLAD).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"geoloc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Tell where a photo was taken by matching it against your own GPS-tagged photos (NetVLAD)."""
