"""Two consoles: data on stdout, everything meant for people on stderr.

Scripts pipe ``--json``/``--csv``/``--geojson`` output; a progress bar or warning on stdout
would corrupt it, so nothing but data is ever written there when a data format is asked for.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from rich.console import Console
from rich.text import Text

from geoloc.files import printable
from geoloc.progress import Progress

err = Console(stderr=True, highlight=False, soft_wrap=True)


def out_console() -> Console:
    # Created per call so that test runners that swap sys.stdout see the output.
    return Console(file=sys.stdout, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    err.print(Text.assemble(("warning:", "yellow"), " ", _one_line(message)))


def info(message: str) -> None:
    err.print(Text("\n".join(printable(line) for line in str(message).split("\n"))))


def error(message: str) -> None:
    err.print(Text.assemble(("error:", "red"), " ", _one_line(message)))


def _one_line(message: str) -> str:
    """Messages are data: one line, every control character escaped, never parsed as markup
    (a photo named ``[red]x[/]`` or with a terminal escape in it is shown as it is named)."""
    return printable(" ".join(str(message).split()))


def print_json(data: Any) -> None:
    """JSON on stdout, UTF-8, readable, and safe for any terminal or parser.

    Paths are kept without loss: a byte of a name that is not UTF-8 travels as Python's
    surrogate escape and is written as the JSON escape ``\\udcXX`` (``os.fsencode`` of the
    parsed string gives the original bytes back). C1 controls and line separators are escaped
    too, so no name can act on the terminal that shows the JSON.
    """
    text = json.dumps(data, indent=2, ensure_ascii=False, default=_json_default)
    sys.stdout.write(_JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n")
    sys.stdout.flush()


def data_out():
    """stdout for data that carries names exactly as they are (CSV for exiftool): a byte of a
    name that is not UTF-8 is written back as that byte, not refused."""
    out = sys.stdout
    try:
        out.reconfigure(errors="surrogateescape")
    except (AttributeError, ValueError, OSError):
        pass
    return out


_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff]")


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


class RichProgress(Progress):
    """The progress protocol (:class:`geoloc.progress.Progress`) drawn as Rich bars on stderr.

    ``transient``: bars vanish when their phase ends (eval, locate, finetune); otherwise each
    phase's bar stays as a record (index). ``rate``: what the phase counts, shown as a
    throughput ("photos" → "7.6 photos/s"); a ``loss`` field, when reported, is shown instead.
    ``warnings``: print each per-file warning as it comes (else the caller lists them later).
    ``bars=False`` draws nothing but the warnings and messages (``--quiet``).
    """

    def __init__(self, *, transient: bool = True, rate: str | None = None, warnings: bool = True,
                 bars: bool = True):
        self.transient = transient
        self.rate = rate
        self.show_warnings = warnings
        self.bars = bars
        self._progress = None
        self._task = None
        self._started = 0.0
        self._done = 0

    def stage(self, description: str, total: int | None) -> None:
        import time

        if not self.bars:
            return
        if self._progress is None:
            self._progress = progress(transient=self.transient)
            self._progress.start()
        self.end_stage()
        self._task = self._progress.add_task(description, total=total, rate="")
        self._started = time.perf_counter()
        self._done = 0

    def advance(self, n: int = 1, **fields: Any) -> None:
        import time

        if self._task is None:
            return
        self._done += n
        elapsed = time.perf_counter() - self._started
        if fields.get("loss"):
            text = f"loss {fields['loss']:.4f}"
        elif self.rate and elapsed > 0.5:
            text = f"{self._done / elapsed:.1f} {self.rate}/s"
        else:
            text = ""
        self._progress.update(self._task, advance=n, rate=text)

    def end_stage(self) -> None:
        if self._task is None:
            return
        if self.transient:
            self._progress.remove_task(self._task)
        else:  # a phase of unknown length keeps a full bar, not a spinner, as its record
            task = next(t for t in self._progress.tasks if t.id == self._task)
            if task.total is None:
                self._progress.update(self._task, total=task.completed)
        self._task = None

    def warning(self, path, reason: str) -> None:
        if self.show_warnings:
            from geoloc.files import display_path

            warn(f"{display_path(path)}: {reason}")

    def message(self, text: str) -> None:
        info(text)

    def close(self) -> None:
        self.end_stage()
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


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
