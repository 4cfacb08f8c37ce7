"""The ``geoloc`` command line: thin wrappers that parse options, call the library, print.

Each command lives in its own module under ``geoloc.cli``; none imports torch, faiss or folium
at module level, so ``geoloc --help`` stays instant.
"""

from __future__ import annotations

from typing import Optional

import typer

from geoloc import __version__

app = typer.Typer(
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


# Registration order is the order shown in --help.
from geoloc.cli import models as _models  # noqa: E402,F401
from geoloc.cli import index as _index  # noqa: E402,F401
from geoloc.cli import photos as _photos  # noqa: E402,F401
from geoloc.cli import locate as _locate  # noqa: E402,F401
from geoloc.cli import eval as _eval  # noqa: E402,F401
from geoloc.cli import finetune as _finetune  # noqa: E402,F401


def main() -> None:
    app()
