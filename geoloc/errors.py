"""Errors that reach the user as one line on stderr, never as a traceback.

Every failure a user can cause (a bad path, a missing model, a corrupt photo) is raised as a
``GeolocError``; the CLI turns it into ``error: <message>`` and the exit code it carries.
"""

from __future__ import annotations

from pathlib import Path


class GeolocError(Exception):
    """A runtime failure the user can act on; exit code 1."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # one line, always
        return " ".join(self.message.split())


class UsageError(GeolocError):
    """The command line itself is wrong; exit code 2."""

    exit_code = 2


class ModelError(GeolocError):
    """A model cannot be found, downloaded, converted or loaded."""


class WeightsUnavailableError(ModelError):
    """Weights are not cached and cannot be downloaded (offline)."""


class DatabaseError(GeolocError):
    """A database is missing, locked, corrupt or built with another model."""


class NoLocatedPhotosError(DatabaseError):
    """A database holds photos, none with a position: nothing to match pixels against (a track
    can still place its photos by time)."""


class DatabaseLockedError(DatabaseError):
    """Another geoloc process is writing the same database."""


class PhotoError(GeolocError):
    """One photo cannot be used. Runs report it and go on with the other photos."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = " ".join(str(reason).split()) or "unknown error"
        super().__init__(f"{self.path}: {self.reason}")

    def __reduce__(self):  # pickled whole (a Ray worker's verdict on a photo travels to the driver)
        return type(self), (self.path, self.reason)


def require(ok: bool, message: str) -> None:
    """One rule for option values the library cannot use: a usage error (exit 2).

    The CLI rejects most of them first (typer's ``min=``); library callers and the options
    typer cannot check get the same exit code and the same kind of message.
    """
    if not ok:
        raise UsageError(message)


def require_at_least(option: str, value: float | None, minimum: float, unit: str = "") -> None:
    """``--batch-size must be at least 1, got 0``; None (a default to be chosen) passes."""
    if value is not None and value < minimum:
        raise UsageError(f"{option} must be at least {minimum:g}{unit}, got {value:g}")


class DatabaseDamagedError(DatabaseError):
    """A database's files disagree with each other or with their checksums.

    The message is one line: what is wrong (the first problem, and how many more), and the
    command that repairs it. ``problems`` holds every problem found, for ``geoloc check``.
    """

    def __init__(self, where: str, problems: list[str], fix: str):
        self.problems = list(problems)
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        super().__init__(f"{where} is damaged: {problems[0]}{more}; {fix}")


class RunInterrupted(GeolocError):
    """Ctrl-C: the run stopped, and the message says what was saved (exit code 130)."""

    exit_code = 130
