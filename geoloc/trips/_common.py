"""What the track readers share: fixes gathered into growing arrays, ISO 8601 times, safe XML.

A reader turns one file into :class:`Points` (every fix as read, in file order, with NaN where a
time or a coordinate is missing or unreadable) and raises :class:`BadTrack` with a reason when it
cannot; :mod:`geoloc.trips.tracks` names the file, cleans the points and builds the ``Track``.
Readers never keep an object per point: a fix is five numbers appended to ``array.array``\\ s
(32 bytes), so a 10⁶-point file costs about 32 MB however it was read.
"""

from __future__ import annotations

import math
import re
from array import array
from datetime import datetime, timezone
from typing import BinaryIO

NAN = float("nan")
#: Bytes read from a file at a time by the streaming readers (XML and JSON alike).
CHUNK = 1 << 20


class BadTrack(ValueError):
    """A file a reader cannot use; the message is the reason, without the file's name."""


class Points:
    """Fixes in file order, before cleaning. ``segment``: the number of the current segment."""

    def __init__(self) -> None:
        self.t = array("d")
        self.lat = array("d")
        self.lon = array("d")
        self.accuracy = array("f")
        self.seg = array("i")
        self.segment = -1
        self.untimed = 0  # fixes without a time stamp
        self.bad_times = 0  # fixes whose time stamp could not be read
        self.bad_time_example = ""
        self.zoneless = 0  # times without a zone, read as UTC
        self.notes: list[str] = []  # reader-specific warnings, one line each

    def __len__(self) -> int:
        return len(self.t)

    def new_segment(self) -> int:
        self.segment += 1
        return self.segment

    def add(self, t: float, lat: float, lon: float, accuracy: float = NAN) -> None:
        self.t.append(t)
        self.lat.append(lat)
        self.lon.append(lon)
        self.accuracy.append(accuracy)
        self.seg.append(self.segment)

    def time(self, text: str | None) -> float:
        """UTC seconds of an ISO 8601 time stamp; NaN (counted) when missing or unreadable."""
        if text is None or not text.strip():
            self.untimed += 1
            return NAN
        seconds, zoned = parse_time(text)
        if math.isnan(seconds):
            self.bad_times += 1
            self.bad_time_example = self.bad_time_example or text.strip()[:40]
        elif not zoned:
            self.zoneless += 1
        return seconds


_ISO = re.compile(
    r"\s*(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d)(?::(\d\d)(?:[.,](\d+))?)?"
    r"\s*(?:([Zz])|([+-])(\d\d)(?::?(\d\d))?)?\s*$"
)


def parse_time(text: str) -> tuple[float, bool]:
    """``(UTC seconds since the epoch, whether the text had a zone)``; NaN when unreadable.

    A date alone (``2024-05-01``) is unreadable here: midnight would be a wrong time, not a
    coarse one. A time without a zone is read as UTC (what GPX and KML define); the caller
    counts those to say so.
    """
    text = text.strip()
    if len(text) >= 16 and text[10] in "Tt ":
        try:  # the fast path: datetime's own parser (3.11 takes "Z" and any fraction)
            dt = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            if dt.tzinfo is None:
                return dt.replace(tzinfo=timezone.utc).timestamp(), False
            return dt.timestamp(), True
    match = _ISO.match(text)
    if match is None:
        return NAN, False
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    try:
        dt = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0),
                      tzinfo=timezone.utc)
    except ValueError:  # month 13, 25 o'clock, a leap second
        return NAN, False
    seconds = dt.timestamp() + (float("0." + fraction) if fraction else 0.0)
    if sign:
        offset = int(off_h) * 3600 + int(off_m or 0) * 60
        seconds -= offset if sign == "+" else -offset
    return seconds, bool(zulu or sign)


def number(text: str | None) -> float:
    """A float from text, NaN when missing or unreadable (so the fix is dropped as invalid)."""
    if text is None:
        return NAN
    try:
        value = float(text)
    except ValueError:
        return NAN
    return value if math.isfinite(value) else NAN


def local_name(tag: str) -> str:
    """``{http://www.topografix.com/GPX/1/1}trkpt`` → ``trkpt``."""
    return tag.rpartition("}")[2]


class LocalNames(dict):
    """``names[tag]``: :func:`local_name`, remembered (a file has a handful of distinct tags)."""

    def __missing__(self, tag: str) -> str:
        name = self[tag] = local_name(tag)
        return name


def parse_xml(stream: BinaryIO, target) -> None:
    """Feed ``stream`` through defusedxml's parser in chunks, calling ``target``'s methods.

    No tree is built: ``target`` gets ``start(tag, attrib)``, ``data(text)`` and ``end(tag)``
    as the parser meets them, so memory stays bounded whatever the file's size. A DOCTYPE, an
    entity declaration or an external reference is refused at once (defusedxml): no track
    format needs one, and they are how the billion-laughs and external-entity attacks work.
    """
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import ParseError, XMLParser

    parser = XMLParser(target=target, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    try:
        while True:
            chunk = stream.read(CHUNK)
            if not chunk:
                break
            parser.feed(chunk)
        parser.close()
    except DefusedXmlException as exc:
        raise BadTrack(f"declares a DTD or entities ({type(exc).__name__}): refused, no track needs "
                       "one and it is the shape of an entity-expansion attack") from None
    except ParseError as exc:
        raise BadTrack(f"is not well-formed XML ({' '.join(str(exc).split())})") from None
