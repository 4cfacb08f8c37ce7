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


class PathCell:
    """A path in a table cell, on one line: cut from the left (``…/lund/29.jpg``) when its column
    is narrower than the path.

    The end of a path, the file's name, is what tells photos apart; Rich's own overflow either
    folds a name mid-word over two lines (``adobe_coor`` / ``ds.jpg``) or cuts its end off.
    The column may shrink to :attr:`MIN` cells before other columns have to give way.
    """

    MIN = 12

    def __init__(self, text: str, style: str = ""):
        self.text = printable(text)
        self.style = style

    def __rich_measure__(self, console, options):
        from rich.cells import cell_len
        from rich.measure import Measurement

        width = cell_len(self.text)
        return Measurement(min(width, self.MIN), width)

    def __rich_console__(self, console, options):
        yield Text(shorten_left(self.text, options.max_width), style=self.style, no_wrap=True, overflow="crop")


def shorten_left(text: str, width: int) -> str:
    """``text`` in at most ``width`` terminal cells, its start replaced by ``…`` when it is longer."""
    from rich.cells import cell_len

    if cell_len(text) <= width:
        return text
    kept = ""
    for char in reversed(text):
        if cell_len(char + kept) > max(width - 1, 0):
            break
        kept = char + kept
    return "…" + kept


class SteadyRate:
    """A phase's throughput once it means something, for its time left.

    The first photos of a phase cost what the rest do not: decoding threads starting, the
    network's first batch, caches filling. A rate (and an ETA) measured from the phase's start
    is wildly off for a minute on a long run, and one taken from a single batch is a guess.
    So the clock starts at the phase's first advance, and a rate is given only once at least
    one more advance has come and ``min_seconds`` have passed since that first one.
    """

    def __init__(self, min_seconds: float = 2.0):
        self.min_seconds = min_seconds
        self.first_at: float | None = None
        self.first_done = 0
        self.last_at = 0.0
        self.done = 0
        self.advances = 0

    def advance(self, n: int, now: float) -> None:
        if n <= 0:  # nothing done: no clock to start
            return
        self.done += n
        self.advances += 1
        if self.first_at is None:
            self.first_at, self.first_done = now, self.done
        self.last_at = now

    def rate(self) -> float | None:
        """Items per second since the first advance, or None while that would be a guess."""
        if self.first_at is None or self.advances < 2:
            return None
        span = self.last_at - self.first_at
        if span < self.min_seconds or self.done <= self.first_done:
            return None
        return (self.done - self.first_done) / span


def format_eta(seconds: float) -> str:
    """Time left as M:SS or H:MM:SS, rounded up (a countdown that shows 0:00 is over)."""
    import math

    seconds = max(0, math.ceil(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress(transient: bool = False):
    """A Rich progress bar on stderr with rate and time left, shared by every long command.

    Two departures from Rich's own columns: the bar pulses while a phase has started but no
    item is done yet (``waiting``: the first batch, a k-means fit), so a long first step never
    looks frozen; and the time left is the phase's :class:`SteadyRate` counted down between
    updates, and absent until that rate exists (Rich's own is wild on the first photos).
    """
    import time

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    class WaitingBar(BarColumn):
        def render(self, task):
            if task.fields.get("waiting") and not task.finished:
                from rich.progress_bar import ProgressBar

                return ProgressBar(total=None, completed=0, width=None if self.bar_width is None else
                                   max(1, self.bar_width), pulse=True, animation_time=task.get_time(),
                                   style=self.style, complete_style=self.complete_style,
                                   finished_style=self.finished_style, pulse_style=self.pulse_style)
            return super().render(task)

    class TimeLeft(ProgressColumn):
        def render(self, task):
            rate, at = task.fields.get("eta_rate"), task.fields.get("eta_at")
            if not rate or task.total is None or task.finished:
                return Text("")
            left = (task.total - task.completed) / rate - (time.perf_counter() - at)
            return Text("eta " + format_eta(left), style="progress.remaining")

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        WaitingBar(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeLeft(),
        console=err,
        transient=transient,
        # Off a terminal a transient bar shows nothing anyway, but Rich still ends it with an
        # empty line: a log or a script's captured stderr would start with a blank line.
        disable=transient and not err.is_terminal,
    )


class RichProgress(Progress):
    """The progress protocol (:class:`geoloc.progress.Progress`) drawn as Rich bars on stderr.

    ``transient``: bars vanish when their phase ends (eval, locate, finetune); otherwise each
    phase's bar stays as a record (index). ``rate``: what the phase counts, shown as a
    throughput ("photos" → "7.6 photos/s"); a ``loss`` field, when reported, is shown instead.
    ``warnings``: print each per-file warning as it comes (else the caller lists them later).
    ``bars=False`` draws nothing but the warnings and messages (``--quiet``).
    ``announce``: off a terminal, where transient bars draw nothing, say each phase as one line
    the first time it starts, so that a run whose output is piped or logged (finetune: minutes
    of decoding and descriptors before its first epoch line) is never silent for long.
    """

    def __init__(self, *, transient: bool = True, rate: str | None = None, warnings: bool = True,
                 bars: bool = True, announce: bool = False):
        self.transient = transient
        self.announce = announce
        self._announced: set[str] = set()
        self.rate = rate
        self.show_warnings = warnings
        self.bars = bars
        self._progress = None
        self._task = None
        self._started = 0.0
        self._done = 0
        self._text = ""
        self._steady = SteadyRate()

    def stage(self, description: str, total: int | None) -> None:
        import time

        if not self.bars:
            return
        if self.announce and not err.is_terminal and description not in self._announced:
            self._announced.add(description)
            info(f"{description}" + (f" ({total:,})" if total else "") + " …")
        if self._progress is None:
            self._progress = progress(transient=self.transient)
            self._progress.start()
        self.end_stage()
        # Until its first item is done, a phase's bar pulses: the first batch can take seconds.
        self._task = self._progress.add_task(description, total=total, rate="", waiting=True,
                                             eta_rate=None, eta_at=None)
        self._started = time.perf_counter()
        self._done = 0
        self._text = ""
        self._steady = SteadyRate()

    def advance(self, n: int = 1, **fields: Any) -> None:
        import time

        if self._task is None or (n <= 0 and not fields):
            return
        now = time.perf_counter()
        self._done += n
        self._steady.advance(n, now)
        steady = self._steady.rate()
        if fields.get("loss"):
            self._text = f"loss {fields['loss']:.4f}"
        elif self.rate and steady is not None:
            self._text = self._throughput(now) or ""
        self._progress.update(self._task, advance=n, rate=self._text, waiting=False, eta_rate=steady, eta_at=now)

    def _throughput(self, now: float) -> str | None:
        """The phase's overall rate (start-up included): what its finished bar keeps."""
        elapsed = now - self._started
        if not self.rate or self._done <= 0 or elapsed <= 0.5:
            return None
        return f"{self._done / elapsed:.1f} {self.rate}/s"

    def status(self, text: str) -> None:
        if self._task is None:
            return
        # What follows a pause is other work (a fit, photos after those already decoded): its
        # time left is measured afresh, from its own first advance.
        self._steady = SteadyRate()
        # Said at once (refresh): the reason to say it is that nothing else moves for a while.
        self._progress.update(self._task, rate=printable(text), waiting=True, eta_rate=None, refresh=True)

    def end_stage(self) -> None:
        import time

        if self._task is None:
            return
        if self.transient:
            self._progress.remove_task(self._task)
        else:  # the record of the phase: a full bar (not a spinner), its count and throughput
            task = next(t for t in self._progress.tasks if t.id == self._task)
            fields = {"waiting": False, "rate": self._throughput(time.perf_counter()) or self._text}
            if task.total is None:
                fields["total"] = task.completed
            self._progress.update(self._task, **fields)
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
