"""Two consoles: data on stdout, everything meant for people on stderr.

Scripts pipe ``--json``/``--csv``/``--geojson`` output; a progress bar or warning on stdout
would corrupt it, so nothing but data is ever written there when a data format is asked for.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

err = Console(stderr=True, highlight=False, soft_wrap=True)


def out_console() -> Console:
    # Created per call so that test runners that swap sys.stdout see the output.
    return Console(file=sys.stdout, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {_one_line(message)}", markup=True, highlight=False)


def info(message: str) -> None:
    err.print(message, markup=False, highlight=False)


def error(message: str) -> None:
    err.print(f"[red]error:[/] {_one_line(message)}", markup=True, highlight=False)


def _one_line(message: str) -> str:
    from rich.markup import escape

    return escape(" ".join(str(message).split()))


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(obj: Any) -> Any:
    import math
    from pathlib import Path

    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        value = obj.item()
        return None if isinstance(value, float) and not math.isfinite(value) else value
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def progress(transient: bool = False):
    """A Rich progress bar on stderr with rate and ETA, shared by every long command."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=transient,
    )
