"""What a long-running library call tells the person waiting for it, and nothing more.

Indexing, evaluation and fine-tuning all speak this one protocol; the CLI draws it
(:class:`geoloc.console.RichProgress`), a notebook or a test may record it, and the default
says nothing. Library code never prints: it reports here, so the same call works under a
progress bar, in a script that wants silence, or inside another run's progress.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


class Progress:
    """Callbacks for people watching; every method is optional to implement."""

    def stage(self, description: str, total: int | None) -> None:
        """A new phase begins (``total`` items, or None when unknown); it ends the previous one."""

    def advance(self, n: int = 1, **fields: Any) -> None:
        """``n`` more items of the current phase are done; ``fields`` (e.g. ``loss``) describe them."""

    def status(self, text: str) -> None:
        """What the current phase is doing while its count stands still ("reading the first
        photos", "clustering 50,000 features"); the next ``advance`` ends it."""

    def end_stage(self) -> None:
        """The current phase is over and nothing replaces it yet (a line of text follows)."""

    def warning(self, path: Path, reason: str) -> None:
        """One photo or folder could not be used; the run goes on."""

    def message(self, text: str) -> None:
        """A line for the person watching (what a step decided, where a file went)."""

    def close(self) -> None:
        """The run is over (successfully or not); whoever created the progress closes it."""


class Prefixed(Progress):
    """Another run's progress, with its phases named as part of this one ("Database: indexing").

    Closing it does not close the progress it forwards to: the outer run goes on.
    """

    def __init__(self, inner: Progress, prefix: str):
        self.inner = inner
        self.prefix = prefix

    def stage(self, description: str, total: int | None) -> None:
        self.inner.stage(self.prefix + description[:1].lower() + description[1:], total)

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.inner.advance(n, **fields)

    def status(self, text: str) -> None:
        self.inner.status(text)

    def end_stage(self) -> None:
        self.inner.end_stage()

    def warning(self, path: Path, reason: str) -> None:
        self.inner.warning(path, reason)

    def message(self, text: str) -> None:
        self.inner.message(text)


def first_batch_status(paths: Sequence, batch_size: int, again: bool) -> str:
    """What a phase does before its count first moves: a whole batch is decoded and goes
    through the network before any photo of it is done (the first one also warms it up)."""
    n = min(len(paths), batch_size)
    if again:
        return f"reading the next {n} photos"
    return f"reading the first {n} photo{'s' if n != 1 else ''} and starting the network"
