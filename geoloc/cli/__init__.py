"""The ``geoloc`` command line: thin wrappers that parse options, call the library, print.

Each command lives in its own module under ``geoloc.cli`` and registers on the app of
:mod:`geoloc.cli.root`; none imports torch, faiss or folium at module level, so
``geoloc --help`` stays instant.
"""

from __future__ import annotations

import typer

from geoloc.cli._common import use_help_classes
from geoloc.cli.root import app

# Commands are listed in --help in the order they are registered here; the `models` group,
# added with add_typer, is listed after the plain commands whatever its place.
from geoloc.cli import models as _models  # noqa: E402,F401
from geoloc.cli import index as _index  # noqa: E402,F401
from geoloc.cli import photos as _photos  # noqa: E402,F401
from geoloc.cli import check as _check  # noqa: E402,F401
from geoloc.cli import locate as _locate  # noqa: E402,F401
from geoloc.cli import clocks as _clocks  # noqa: E402,F401
from geoloc.cli import review as _review  # noqa: E402,F401
from geoloc.cli import undo as _undo  # noqa: E402,F401
from geoloc.cli import eval as _eval  # noqa: E402,F401
from geoloc.cli import finetune as _finetune  # noqa: E402,F401

use_help_classes(app)


def main() -> None:
    """Run the CLI; usage errors are one line on stderr (exit 2), like every other error.

    Typer would draw click's usage errors as a boxed, multi-line panel; scripts and people
    reading logs get the same ``error: …`` line as for any other failure instead.
    """
    import sys

    from geoloc.cli._common import click_errors

    try:
        code = app(standalone_mode=False)
    except click_errors() as exc:
        names = {cls.__name__ for cls in type(exc).__mro__}
        ctx = getattr(exc, "ctx", None)
        if "NoArgsIsHelpError" in names:
            # `geoloc` alone: typer's Rich formatter has already drawn the help while the error
            # was built (its message comes back empty); a plain formatter leaves it in the message.
            if exc.format_message().strip():
                typer.echo(exc.format_message())
        else:
            from geoloc import console

            message = exc.format_message()
            if "UsageError" in names:
                message += f" (see `{ctx.command_path if ctx else 'geoloc'} --help`)"
            console.error(message)
        code = exc.exit_code
    except typer.Abort:  # Ctrl-C while click itself was prompting or parsing
        from geoloc import console

        console.error("interrupted")
        code = 130
    sys.exit(code if isinstance(code, int) else 0)
