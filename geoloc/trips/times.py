"""Capture times as cameras write them, and the camera bodies they belong to.

EXIF ``DateTimeOriginal`` is the reading of the camera's clock, without a zone unless
``OffsetTimeOriginal`` says so; ``GPSDateStamp``/``GPSTimeStamp`` is UTC. Everything time-based in
geoloc works in UTC seconds, so a naive reading is kept as "the clock's reading" (seconds since
the epoch, as if it were UTC) and only becomes a UTC time once the clock's offset is known:
``utc = reading - offset_s``, ``offset_s`` being how far the camera's clock runs ahead of UTC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

_ZONE = re.compile(r"([+-])(\d{2}):(\d{2})$")


@dataclass(frozen=True)
class Camera:
    """One camera body: EXIF Make, Model and serial number (each None when not written)."""

    make: Optional[str] = None
    model: Optional[str] = None
    serial: Optional[str] = None

    @property
    def name(self) -> str:
        """How people and ``--clock NAME=…`` name it (:func:`geoloc.formatting.camera_name`)."""
        from geoloc.formatting import camera_name

        return camera_name(self.make, self.model, self.serial)

    @property
    def known(self) -> bool:
        return bool(self.make or self.model)

    @classmethod
    def of(cls, source: Any) -> "Camera":
        """The camera of a database record or a photo's metadata."""
        return cls(getattr(source, "camera_make", None), getattr(source, "camera_model", None),
                   getattr(source, "camera_serial", None))

    def to_json(self) -> dict:
        return {"camera": self.name, "make": self.make, "model": self.model, "serial": self.serial}


@dataclass(frozen=True)
class Reading:
    """A capture time as written: the clock's reading (seconds, as if UTC), and the zone the
    camera wrote with it (seconds east of UTC), or None."""

    clock_s: float
    zone_s: Optional[int]

    @property
    def utc_s(self) -> Optional[float]:
        """The UTC time when the camera wrote its zone; None otherwise."""
        return None if self.zone_s is None else self.clock_s - self.zone_s


#: A photo whose only time is IFD0 DateTime: the time its file was last written.
MODIFIED_ONLY = ("capture time not used: the photo carries only EXIF DateTime, the time its file was last "
                 "written (by an editor as often as by the camera), not DateTimeOriginal")


def reading_of(item) -> Optional[Reading]:
    """The capture time of a photo, a database row or an answer as trips use it: None for a
    time read from DateTime alone (``time_tag`` "modified"), which places nothing."""
    if getattr(item, "time_tag", None) == "modified":
        return None
    return reading(getattr(item, "taken_at", None))


def reading(taken_at: Optional[str]) -> Optional[Reading]:
    """The :class:`Reading` of an ISO 8601 capture time as geoloc stores it, or None."""
    if not taken_at:
        return None
    text = taken_at.strip()
    zone_s = None
    match = _ZONE.search(text)
    if match:
        sign = 1 if match.group(1) == "+" else -1
        zone_s = sign * (int(match.group(2)) * 3600 + int(match.group(3)) * 60)
        text = text[:match.start()]
    elif text.endswith("Z"):
        zone_s, text = 0, text[:-1]
    try:
        naive = datetime.fromisoformat(text)
    except ValueError:
        return None
    if naive.tzinfo is not None:
        naive = naive.replace(tzinfo=None)
    return Reading(naive.replace(tzinfo=timezone.utc).timestamp(), zone_s)


def utc_seconds(iso: Optional[str]) -> Optional[float]:
    """UTC seconds of an ISO 8601 time with a zone (a GPS time stamp, a track's time)."""
    if not iso:
        return None
    text = iso.strip().replace("Z", "+00:00")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def iso_utc(seconds: Optional[float]) -> Optional[str]:
    if seconds is None:
        return None
    when = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def format_offset(seconds: Optional[float]) -> str:
    """``+HH:MM:SS`` (the form ``--clock`` takes), or "unknown"."""
    if seconds is None:
        return "unknown"
    sign = "-" if seconds < 0 else "+"
    total = int(round(abs(seconds)))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{sign}{days * 24 + hours:02d}:{minutes:02d}:{secs:02d}"


_OFFSET = re.compile(r"^\s*([+-])?(\d{1,7})(?::(\d{1,2}))?(?::(\d{1,2}(?:\.\d+)?))?\s*$")
#: The largest offset taken (hours): a camera whose date was never set can be years off.
MAX_OFFSET_H = 100 * 366 * 24


def parse_offset(text: str) -> Optional[float]:
    """Seconds of ``±HH:MM:SS`` (``±HH:MM`` and ``±HH`` too; hours past 24 as
    :func:`format_offset` writes them), or None when it is not one."""
    match = _OFFSET.match(text)
    if not match:
        return None
    sign = -1 if match.group(1) == "-" else 1
    hours, minutes, secs = int(match.group(2)), int(match.group(3) or 0), float(match.group(4) or 0)
    if minutes >= 60 or secs >= 60 or hours > MAX_OFFSET_H:
        return None
    return sign * (hours * 3600 + minutes * 60 + secs)
