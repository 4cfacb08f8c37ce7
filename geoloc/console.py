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


def download_bar_class():
    """A tqdm class that draws huggingface_hub's download progress as a Rich bar on stderr.

    huggingface_hub reports downloads through tqdm; this adapter keeps the look of every other
    geoloc progress bar (and keeps stdout clean) without reimplementing the download.
    """
    import io

    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from tqdm.std import tqdm

    class RichDownloadBar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)
            kwargs["file"] = io.StringIO()  # tqdm's own text rendering goes nowhere
            self._bar = None
            super().__init__(*args, **kwargs)
            if self.disable:
                return
            self._bar = Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=err,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.desc or "downloading", total=self.total, completed=self.n)

        def display(self, *args, **kwargs):
            if self._bar is not None:
                self._bar.update(self._task, completed=self.n, total=self.total)
            return True

        def close(self):
            if self._bar is not None:
                self._bar.update(self._task, completed=self.n, total=self.total)
                self._bar.stop()
                self._bar = None
            super().close()

    return RichDownloadBar
