"""Google Takeout's JSON sidecars: which one belongs to a photo, and the position it holds.

Google Photos exports each photo with a JSON file beside it, and for photos whose EXIF lost its
GPS (or never had it: positions set on Google's map) that file is the only record of where it
was taken. Its name follows rules Google does not document, reconstructed here from real
exports:

- ``photo.jpg.json`` (older exports) or ``photo.jpg.supplemental-metadata.json`` (since 2024);
- the name before ``.json`` is cut to :data:`NAME_LIMIT` characters, so a long name loses the
  end of ``.supplemental-metadata``, then of its own extension: ``…_HDR.jpg.supplemental-me.json``,
  ``…(38).JP.json``;
- a duplicate name's counter moves behind the cut: ``photo(1).jpg`` ↔ ``photo.jpg(1).json``;
- an edited copy, ``photo-edited.jpg``, has no JSON of its own: it shares ``photo.jpg``'s.

A cut name can fit two photos (two long names that start alike), and counters and edited copies
are guesses about what a name means, so those JSON files count only when their ``title`` (the
name the photo was uploaded with) says it is this photo. ``geoData`` is the position Google
Photos shows (the one a user may have corrected), ``geoDataExif`` the one from the upload's
EXIF; ``0, 0`` in either means none.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

from geoloc.photos.bounded import read_bounded

#: Takeout cuts a sidecar's name, without ``.json`` and the duplicate counter, to this length.
NAME_LIMIT = 46
SUPPLEMENTAL = ".supplemental-metadata"
#: A Takeout sidecar is a few KB; anything far larger is not one.
MAX_BYTES = 1 << 20

_COUNTER_RE = re.compile(r"^(?P<stem>.*?)\((?P<n>\d+)\)(?P<ext>\.[^.]*)?$")
_EDITED = "-edited"


@dataclass(frozen=True)
class TakeoutName:
    """A name a photo's JSON may have; ``title``: the ``title`` the JSON must carry to count
    (``None``: the name alone is proof enough)."""

    name: str
    title: str | None


def takeout_names(photo_name: str) -> list[TakeoutName]:
    """The names Takeout may have given ``photo_name``'s JSON, the surest first."""
    originals: list[tuple[str, str, bool]] = [(photo_name, "", True)]  # (original, counter, sure)
    match = _COUNTER_RE.match(photo_name)
    if match:
        originals.append((match["stem"] + (match["ext"] or ""), f"({match['n']})", False))
    stem, dot, ext = photo_name.rpartition(".")
    if dot and stem.endswith(_EDITED):
        originals.append((stem[: -len(_EDITED)] + "." + ext, "", False))
    out: list[TakeoutName] = []
    seen: set[str] = set()
    for original, counter, sure in originals:
        for full in (original + SUPPLEMENTAL, original):
            for cut in _cuts(full):
                name = cut + counter + ".json"
                if name in seen:
                    continue
                seen.add(name)
                exact = sure and cut == full
                out.append(TakeoutName(name, None if exact else original))
    return out


def _cuts(name: str) -> list[str]:
    """``name`` cut to the limit; in characters, and also in UTF-8 bytes for names beyond ASCII
    (exports disagree on which)."""
    cuts = [name[:NAME_LIMIT]]
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) != len(name):
        cuts.append(encoded[:NAME_LIMIT].decode("utf-8", "ignore"))
    return cuts


@dataclass
class TakeoutGps:
    """The position in one Takeout JSON as EXIF tag values (as :mod:`geoloc.photos.xmp` gives
    them), or why there is none."""

    tags: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def read_takeout(path: str | os.PathLike, title: str | None = None) -> TakeoutGps:
    """The position in the Takeout JSON at ``path``; never raises.

    With ``title``, the JSON counts only if its ``title`` is that name (letter case aside).
    """
    data, error = read_bounded(path, MAX_BYTES, "not a Takeout sidecar")
    if data is None:
        return TakeoutGps(error=error)
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except (ValueError, RecursionError) as exc:
        return TakeoutGps(error=f"not valid JSON ({type(exc).__name__})")
    if not isinstance(doc, dict):
        return TakeoutGps(error="not a Takeout sidecar (no JSON object)")
    if title is not None:
        found = doc.get("title")
        if not isinstance(found, str) or found.casefold() != title.casefold():
            return TakeoutGps(error=f"its title is not {title!r}, so it may describe another photo")
    reasons = []
    for key in ("geoData", "geoDataExif"):
        tags, reason = _position(doc.get(key), key)
        if tags:
            return TakeoutGps(tags=tags)
        reasons.append(reason)
    return TakeoutGps(error="; ".join(r for r in reasons if r) or "no position")


def _position(block: Any, key: str) -> tuple[dict[str, Any], str | None]:
    if block is None:
        return {}, None
    if not isinstance(block, dict):
        return {}, f"{key} is not an object"
    lat, lon = _number(block.get("latitude")), _number(block.get("longitude"))
    if lat is None or lon is None:
        return {}, f"{key} has no latitude and longitude"
    if lat == 0.0 and lon == 0.0:
        return {}, f"{key} is 0, 0 (no position)"
    tags: dict[str, Any] = {"GPSLatitude": [lat], "GPSLongitude": [lon]}
    altitude = _number(block.get("altitude"))
    if altitude is not None and altitude != 0.0:  # Takeout writes 0.0 for "unknown" as well
        tags["GPSAltitude"] = [abs(altitude)]
        tags["GPSAltitudeRef"] = 1 if altitude < 0 else 0
    return tags, None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    return None
