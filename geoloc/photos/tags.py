"""What EXIF tag values mean: a GPS position, its altitude and accuracy, the capture time, the
orientation, from the values as ExifRead and Pillow give them (and sidecars, under the same
tag numbers).

A wrong position is worse than none, so every rule here errs towards "no position, and why":
devices write every variant the EXIF standard allows and several it does not.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

from geoloc import __version__
from geoloc.geo import is_valid_position

# GPS IFD tag numbers (EXIF 2.32 / 3.0). Looked up by number because ExifRead names some of them
# only as "Tag 0x001F".
GPS_LATITUDE_REF, GPS_LATITUDE, GPS_LONGITUDE_REF, GPS_LONGITUDE = 1, 2, 3, 4
GPS_ALTITUDE_REF, GPS_ALTITUDE, GPS_DOP, GPS_H_POSITIONING_ERROR = 5, 6, 11, 31
GPS_PROCESSING_METHOD = 27
ORIENTATION, DATETIME, GPS_IFD_POINTER = 0x0112, 0x0132, 0x8825
# (date-time, its time-zone offset, its sub-seconds), best first.
TIME_TAGS = ((0x9003, 0x9011, 0x9291), (0x9004, 0x9012, 0x9292), (0x0132, 0x9010, 0x9290))

DOP_TO_METRES = 5.0
"""Metres of horizontal error per unit of GPSDOP, a typical consumer receiver's range error."""

ALTITUDE_RANGE_M = (-11_000.0, 100_000.0)  # Mariana Trench to the edge of space

#: EXIF GPS tag numbers by name: sidecars give their values under these names.
GPS_TAG_NUMBERS = {"GPSLatitudeRef": GPS_LATITUDE_REF, "GPSLatitude": GPS_LATITUDE,
                   "GPSLongitudeRef": GPS_LONGITUDE_REF, "GPSLongitude": GPS_LONGITUDE,
                   "GPSAltitudeRef": GPS_ALTITUDE_REF, "GPSAltitude": GPS_ALTITUDE, "GPSDOP": GPS_DOP,
                   "GPSHPositioningError": GPS_H_POSITIONING_ERROR}

Tags = dict[int, Any]

#: How ``geoloc locate --write-exif`` signs the GPS it writes (EXIF GPSProcessingMethod): such
#: a position is an estimate, and is never read back as the photo's own.
GEOLOC_METHOD_PREFIX = "geoloc"
#: The whole note, as ``--write-exif`` writes it and the CSV and sidecars carry it for exiftool.
PROCESSING_METHOD = f"{GEOLOC_METHOD_PREFIX} {__version__} estimate (visual place recognition)"


def orientation_value(values: Any) -> int:
    value = _integer(values)
    return value if value is not None and 1 <= value <= 8 else 1


# --- GPS --------------------------------------------------------------------------------------


def written_by_geoloc(gps: Tags) -> bool:
    """The GPS block carries geoloc's processing-method note (``geoloc locate --write-exif``).

    EXIF's GPSProcessingMethod starts with an 8-byte character-code header ("ASCII\\0\\0\\0").
    """
    text = _text(gps.get(GPS_PROCESSING_METHOD)) or ""
    for header in ("ASCII\x00\x00\x00", "UNICODE\x00", "charset=Ascii "):
        text = text.removeprefix(header)
    return text.lstrip("\x00 ").lower().startswith(GEOLOC_METHOD_PREFIX)


def gps_position(gps: Tags) -> tuple[float | None, float | None, str | None]:
    """``(lat, lon, None)`` for a usable position, else ``(None, None, reason)``.

    ``gps`` maps GPS IFD tag numbers to values as ExifRead or Pillow give them.
    """
    if not gps:
        return None, None, "no GPS data"
    lat_values, lon_values = gps.get(GPS_LATITUDE), gps.get(GPS_LONGITUDE)
    if is_empty(lat_values) and is_empty(lon_values):
        return None, None, "GPS block without coordinates"
    if is_empty(lon_values):
        return None, None, "GPS latitude without longitude"
    if is_empty(lat_values):
        return None, None, "GPS longitude without latitude"
    lat, reason = _coordinate(lat_values, gps.get(GPS_LATITUDE_REF), "latitude", 90.0, "N", "S")
    if reason:
        return None, None, reason
    lon, reason = _coordinate(lon_values, gps.get(GPS_LONGITUDE_REF), "longitude", 180.0, "E", "W")
    if reason:
        return None, None, reason
    if lat == 0.0 and lon == 0.0:
        return None, None, "GPS position (0, 0), which devices write when they have no fix"
    if not is_valid_position(lat, lon):
        return None, None, f"GPS position out of range ({lat:g}, {lon:g})"
    return lat, lon, None


def _coordinate(
    values: Any, ref: Any, name: str, limit: float, positive: str, negative: str
) -> tuple[float | None, str | None]:
    """Degrees from 1–3 values: decimal degrees, degrees + decimal minutes, or D/M/S.

    A zero denominator is unreadable in the degrees; 0/0 in the minutes or seconds is read as
    0 (devices that write decimal minutes fill the seconds with 0/0). The reference letter
    gives the sign; without one, a negative degree value does, else the value is N/E.
    """
    parts = _elements(values)
    if len(parts) > 3 and all(_number(p, 0.0) == 0.0 for p in parts[3:]):
        parts = parts[:3]
    if not 1 <= len(parts) <= 3:
        return None, f"unreadable GPS {name} ({len(parts)} values)"
    degrees = _number(parts[0])
    rest = [_number(p, zero_over_zero=0.0) for p in parts[1:]]
    if degrees is None or any(r is None for r in rest):
        return None, f"unreadable GPS {name} (zero denominator or not a number)"
    minutes, seconds = (rest + [0.0, 0.0])[:2]
    if not (0.0 <= minutes <= 60.0 and 0.0 <= seconds <= 60.0):
        return None, f"GPS {name} out of range (minutes {minutes:g}, seconds {seconds:g})"
    magnitude = abs(degrees) + minutes / 60.0 + seconds / 3600.0
    letter = _ref_letter(ref)
    if letter is None:
        sign = -1.0 if degrees < 0 else 1.0
    elif letter == positive:
        sign = 1.0
    elif letter == negative:
        sign = -1.0
    else:
        return None, f"unknown GPS {name} reference {_text(ref)!r}"
    if magnitude > limit:
        return None, f"GPS {name} out of range ({sign * magnitude:g})"
    return sign * magnitude, None


def gps_altitude(gps: Tags) -> float | None:
    """Metres above sea level; ``GPSAltitudeRef`` 1 (or EXIF 3's 3) means below."""
    parts = _elements(gps.get(GPS_ALTITUDE))
    if not parts:
        return None
    altitude = _number(parts[0])
    if altitude is None:
        return None
    ref = _integer(gps.get(GPS_ALTITUDE_REF))
    if ref in (1, 3):
        altitude = -abs(altitude)
    low, high = ALTITUDE_RANGE_M
    return altitude if low <= altitude <= high else None


def gps_accuracy(gps: Tags) -> float | None:
    """Horizontal error in metres: GPSHPositioningError, else GPSDOP × 5 m; None when unknown."""
    error = _first_number(gps.get(GPS_H_POSITIONING_ERROR))
    if error is not None and 0.0 < error < 1e6:
        return error
    dop = _first_number(gps.get(GPS_DOP))
    if dop is not None and 0.0 < dop < 1e4:
        return dop * DOP_TO_METRES
    return None


# --- capture time -----------------------------------------------------------------------------

_DATETIME_RE = re.compile(
    r"^\s*(\d{4})[:\-/.](\d{1,2})[:\-/.](\d{1,2})[ T]+(\d{1,2}):(\d{1,2})(?::(\d{1,2}))?"
    r"(?:[.,](\d+))?\s*(Z|[+-]\d{2}:?\d{2})?\s*$"
)
_OFFSET_RE = re.compile(r"^([+-])(\d{2}):?(\d{2})$")


#: What :func:`capture_time_and_tag` says of the tag a time came from, as TIME_TAGS orders them.
TIME_TAG_NAMES = ("original", "digitized", "modified")


def capture_time(ifd0: Tags, exif: Tags) -> str | None:
    """ISO 8601 local time of capture, with sub-seconds and UTC offset when the camera wrote them.

    DateTimeOriginal first, then DateTimeDigitized, then DateTime (which editors overwrite,
    so it is the last resort); each with its own OffsetTime*/SubSecTime* companions.
    """
    return capture_time_and_tag(ifd0, exif)[0]


def capture_time_and_tag(ifd0: Tags, exif: Tags) -> tuple[str | None, str | None]:
    """:func:`capture_time` and which tag gave it: ``"modified"`` (IFD0 DateTime alone) is the
    time the file was last written by whatever wrote it, an editor's as often as the camera's,
    so trips do not take it for the moment of capture."""
    for (when, offset, subsec), name in zip(TIME_TAGS, TIME_TAG_NAMES):
        tags = ifd0 if when == DATETIME else exif
        iso = _iso_time(tags.get(when), exif.get(offset), exif.get(subsec))
        if iso:
            return iso, name
    return None, None


def _iso_time(value: Any, offset: Any, subsec: Any) -> str | None:
    match = _DATETIME_RE.match(_text(value) or "")
    if not match:
        return None
    year, month, day, hour, minute, second = (int(g or 0) for g in match.groups()[:6])
    try:
        datetime(year, month, day, hour, minute, second)
    except ValueError:  # "0000:00:00 00:00:00" and other placeholders
        return None
    iso = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
    fraction = match.group(7) or re.sub(r"\D", "", _text(subsec) or "")
    if fraction:
        iso += "." + fraction[:6]
    zone = match.group(8) or (_text(offset) or "").strip()
    if zone == "Z":
        return iso + "+00:00"
    zone_match = _OFFSET_RE.match(zone)
    if zone_match and int(zone_match.group(2)) <= 14 and int(zone_match.group(3)) < 60:
        iso += f"{zone_match.group(1)}{zone_match.group(2)}:{zone_match.group(3)}"
    return iso


# --- the camera and the GPS receiver's clock (trips) -------------------------------------------

MAKE, MODEL = 0x010F, 0x0110
#: EXIF BodySerialNumber, then DNG's CameraSerialNumber (IFD0): what tells two bodies of one model apart.
BODY_SERIAL, CAMERA_SERIAL = 0xA431, 0xC62F
GPS_TIME_STAMP, GPS_DATE_STAMP = 0x0007, 0x001D


def camera_of(ifd0: Tags, exif: Tags) -> tuple[str | None, str | None, str | None]:
    """Make, model and serial number as the camera wrote them (stripped; None when absent).

    A clock belongs to a camera body: the offset geoloc solves for one photo holds for every
    photo of the same body, and only for those."""
    def clean(value: Any) -> str | None:
        text = (_text(value) or "").strip().strip("\x00").strip()
        return " ".join(text.split()) or None

    make, model = clean(ifd0.get(MAKE)), clean(ifd0.get(MODEL))
    serial = clean(exif.get(BODY_SERIAL)) or clean(ifd0.get(CAMERA_SERIAL))
    if serial is not None and set(serial) <= {"0", " "}:  # "0000000": a placeholder, not a body
        serial = None
    return make, model, serial


def gps_utc_time(gps: Tags) -> str | None:
    """ISO 8601 UTC time of the GPS fix (GPSDateStamp + GPSTimeStamp), or None.

    The receiver's clock is UTC whatever the camera's is set to: a photo carrying both it and a
    capture time tells how far its camera's clock is off."""
    date = re.match(r"^\s*(\d{4})[:\-/.](\d{1,2})[:\-/.](\d{1,2})", _text(gps.get(GPS_DATE_STAMP)) or "")
    parts = [_number(v) for v in _elements(gps.get(GPS_TIME_STAMP))]
    if date is None or len(parts) != 3 or any(p is None for p in parts):
        return None
    hour, minute, second = parts
    if not (0 <= hour < 24 and 0 <= minute < 60 and 0 <= second < 61):
        return None
    try:
        day = datetime(int(date.group(1)), int(date.group(2)), int(date.group(3)))
    except ValueError:
        return None
    whole = int(second)
    micro = int(round((second - whole) * 1e6))
    if micro >= 1_000_000:
        whole, micro = whole + 1, 0
    iso = f"{day:%Y-%m-%d}T{int(hour):02d}:{int(minute):02d}:{min(whole, 59):02d}"
    if micro:
        iso += f".{micro:06d}".rstrip("0")
    return iso + "+00:00"


# --- values as ExifRead and Pillow give them --------------------------------------------------


def _elements(values: Any) -> list:
    """The list of numbers in a tag value: a list, one number, or text such as ``"43 28 2.81"``."""
    if values is None:
        return []
    if isinstance(values, (str, bytes)):
        text = _text(values) or ""
        return [float(t) for t in re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", text)]
    if isinstance(values, (list, tuple)):
        return list(values)
    return [values]


def is_empty(values: Any) -> bool:
    return not _elements(values)


def _number(value: Any, zero_over_zero: float | None = None) -> float | None:
    """A finite float from an int, float, ExifRead Ratio, Pillow IFDRational or (num, den) pair.

    x/0 is never a number; 0/0 is ``zero_over_zero``.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        result = float(value)
        return result if math.isfinite(result) else None
    if isinstance(value, (str, bytes)):
        parts = _elements(value)
        return _number(parts[0]) if len(parts) == 1 else None
    if isinstance(value, tuple) and len(value) == 2:
        numerator, denominator = value
    else:
        numerator = getattr(value, "numerator", None)
        denominator = getattr(value, "denominator", None)
        if numerator is None or denominator is None:
            try:
                result = float(value)
            except (TypeError, ValueError, ZeroDivisionError, OverflowError):
                return None
            return result if math.isfinite(result) else None
    try:
        numerator, denominator = float(numerator), float(denominator)
    except (TypeError, ValueError, OverflowError):
        return None
    if denominator == 0.0:
        return zero_over_zero if numerator == 0.0 else None
    result = numerator / denominator
    return result if math.isfinite(result) else None


def _first_number(values: Any) -> float | None:
    parts = _elements(values)
    return _number(parts[0]) if parts else None


def _integer(values: Any) -> int | None:
    """A small integer tag (a BYTE or SHORT) however it is wrapped: [1], b"\\x01", "1", 1."""
    if isinstance(values, bytes):
        if not values:
            return None
        text = values.decode("latin-1").strip("\x00 ")
        return int(text) if text.isdigit() else values[0]
    if isinstance(values, str):
        text = values.strip("\x00 ")
        if text.isdigit():
            return int(text)
        return ord(text[0]) if len(text) == 1 and ord(text[0]) < 32 else None
    if isinstance(values, (list, tuple)):
        return _integer(values[0]) if values else None
    number = _number(values)
    return int(number) if number is not None and number.is_integer() else None


def _text(value: Any) -> str | None:
    """A tag value as text: ASCII tags are str from ExifRead, sometimes bytes or byte lists."""
    if value is None:
        return None
    if isinstance(value, bytes):
        text = value.decode("latin-1")
    elif isinstance(value, (list, tuple)):
        if all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 256 for v in value):
            text = bytes(value).decode("latin-1")
        else:
            text = " ".join(str(v) for v in value)
    else:
        text = str(value)
    return text.strip("\x00 \t\r\n")


def _ref_letter(ref: Any) -> str | None:
    text = _text(ref)
    return text[:1].upper() if text else None
