"""What an XMP sidecar (digiKam, darktable, Lightroom, Immich, exiftool), or the XMP packet inside
a photo (Adobe's software, GIMP), says about the photo's GPS.

Photo managers keep a position they were given (a map drag, a GPX track) in a sidecar rather
than in the original, so for many archives the sidecar is the only place it exists. Two rules
keep that from ever becoming a wrong position:

- a sidecar geoloc wrote itself (``geoloc locate --xmp``) holds an *estimate*; it is recognised
  by geoloc's namespace (or ``x:xmptk``/``xmp:CreatorTool`` naming geoloc) and never read back
  as truth, or every estimate would become ground truth on the next ``geoloc index``;
- the XML is parsed without a DTD: a sidecar with a DOCTYPE or an entity declaration is refused
  (no XMP writer produces one; it is the shape of the billion-laughs and external-entity
  attacks), and files past :data:`MAX_BYTES` are not read.

This module only reads and normalises the GPS properties of the EXIF schema into the forms
EXIF tags take (lists of numbers, reference letters, rationals); whether they make a usable
position is decided by the same rules as EXIF GPS (:func:`geoloc.photos.tags.gps_position`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from geoloc.photos.bounded import read_bounded

EXIF_NS = "http://ns.adobe.com/exif/1.0/"
#: CIPA's "Exif 2.3 for XMP" schema (exifEX): GPSHPositioningError lives here.
EXIFEX_NS = "http://cipa.jp/exif/1.0/"
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
X_NS = "adobe:ns:meta/"
XMP_NS = "http://ns.adobe.com/xap/1.0/"
#: geoloc's own namespace in the sidecars it writes (``.invalid``: a name that can never resolve).
GEOLOC_NS = "http://geoloc.invalid/ns/1.0/"

#: Sidecars with edit histories (darktable masks, Lightroom develop settings) reach a few MB.
MAX_BYTES = 16 << 20

#: The GPS properties read, under their EXIF tag names.
COORDINATES = ("GPSLatitude", "GPSLongitude")
PROPERTIES = COORDINATES + ("GPSLatitudeRef", "GPSLongitudeRef", "GPSAltitude", "GPSAltitudeRef",
                            "GPSHPositioningError", "GPSDOP")

_SEP = "\x1f"  # expat's separator between a namespace and a local name
_CREATOR_TOOL = "\x00CreatorTool"  # xmp:CreatorTool given as an element (not a GPS property)


class RefusedXmp(ValueError):
    """A sidecar geoloc will not read: the reason is the message."""


@dataclass
class XmpGps:
    """The GPS properties of one sidecar, as EXIF tag values, or why there are none.

    ``tags`` maps EXIF tag names (``"GPSLatitude"``) to values in the forms ExifRead gives:
    coordinates as a list of numbers with their reference letter under ``"GPSLatitudeRef"``,
    rationals as ``(numerator, denominator)``. ``by_geoloc``: geoloc wrote this sidecar.
    """

    tags: dict[str, Any] = field(default_factory=dict)
    by_geoloc: bool = False
    error: str | None = None


def read_xmp(path: str | os.PathLike) -> XmpGps:
    """The GPS of the sidecar at ``path``; never raises (an unreadable file is an ``error``)."""
    data, error = read_bounded(path, MAX_BYTES, "not read")
    return parse_xmp(data) if data is not None else XmpGps(error=error)


def embedded_xmp(info: dict) -> XmpGps | None:
    """The GPS of the XMP packet inside a photo, or None when it carries none.

    ``info`` is the photo's Pillow header (``Image.info``): Pillow keeps the packet of JPEG's
    APP1 segment named ``http://ns.adobe.com/xap/1.0/`` under ``"xmp"``, and so that of PNG's
    ``XML:com.adobe.xmp`` chunk, WebP's ``XMP`` chunk and TIFF's tag 700. A JPEG segment is at
    most 64 KiB; a packet past :data:`MAX_BYTES` in other formats is not parsed. Adobe's
    software keeps the position here (and not in EXIF) when a map or a GPX track set it.
    """
    packet = info.get("xmp")
    if isinstance(packet, str):
        packet = packet.encode("utf-8", "surrogateescape")
    if not isinstance(packet, (bytes, bytearray)) or not packet:
        return None
    if len(packet) > MAX_BYTES:
        return XmpGps(error=f"larger than {MAX_BYTES >> 20} MiB, not read")
    return parse_xmp(bytes(packet))


def written_by_geoloc(path: str | os.PathLike) -> bool:
    """Whether geoloc wrote the sidecar at ``path`` (an estimate: never truth, may be replaced).

    Checked on the parsed document (any property in geoloc's namespace, or ``x:xmptk`` /
    ``xmp:CreatorTool`` naming geoloc), so that a photo manager re-saving the sidecar with
    other quoting or prefixes does not turn the estimate into truth; the raw namespace
    declaration also counts, for a file damaged past parsing.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError:
        return False
    if GEOLOC_NS.encode() in data:
        return True
    return parse_xmp(data[:MAX_BYTES]).by_geoloc


def parse_xmp(data: bytes) -> XmpGps:
    """The GPS properties in an XMP document, from attributes and elements alike.

    XMP writers disagree on the serialisation: digiKam, darktable and Lightroom put properties
    in attributes of ``rdf:Description``, exiftool and Immich write elements, some split the
    schemas over several ``rdf:Description`` blocks. All of these count; a property given twice
    with different values makes the sidecar unusable (which one is true?).
    """
    reader = _Reader()
    if not data.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 ends in NULs of its own
        data = data.rstrip(b"\x00 \t\r\n")  # padding some writers leave after the packet
    try:
        reader.feed(data)
    except RefusedXmp as exc:
        return XmpGps(by_geoloc=reader.by_geoloc, error=str(exc))
    except Exception as exc:  # expat's ExpatError, and anything odd a damaged file triggers
        text = " ".join(str(exc).split()) or type(exc).__name__
        return XmpGps(by_geoloc=reader.by_geoloc, error=f"not valid XML ({text})")
    if reader.conflict:
        return XmpGps(by_geoloc=reader.by_geoloc,
                      error=f"two different {reader.conflict} values")
    tags: dict[str, Any] = {}
    try:
        for name, text in reader.values.items():
            for key, value in _tag_values(name, text).items():
                if key in tags and _letter(tags[key]) != _letter(value):
                    raise RefusedXmp(f"{key[:-3]} says both {tags[key]} and {value}")
                tags[key] = value
    except RefusedXmp as exc:
        return XmpGps(by_geoloc=reader.by_geoloc, error=str(exc))
    return XmpGps(tags=tags, by_geoloc=reader.by_geoloc)


class _Reader:
    """A streaming pass over the document with expat, collecting GPS properties."""

    def __init__(self) -> None:
        from xml.parsers import expat

        self.values: dict[str, str] = {}
        self.conflict: str | None = None
        self.by_geoloc = False
        self._collecting: list[tuple[str | None, list[str]]] = []  # per open element
        parser = expat.ParserCreate(namespace_separator=_SEP)
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.StartDoctypeDeclHandler = self._doctype
        parser.EntityDeclHandler = self._entity
        parser.ExternalEntityRefHandler = self._external
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._text
        self._parser = parser

    def feed(self, data: bytes) -> None:
        self._parser.Parse(data, True)

    # --- what is refused

    def _doctype(self, *args) -> None:
        raise RefusedXmp("has a DOCTYPE, which XMP never needs; not read")

    def _entity(self, *args) -> None:
        raise RefusedXmp("declares XML entities, which XMP never needs; not read")

    def _external(self, *args) -> int:
        raise RefusedXmp("refers to an external entity; not read")

    # --- what is collected

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        ns, local = _split(name)
        self._note_tool(ns, local, None)
        for key, value in attrs.items():
            attr_ns, attr_local = _split(key)
            self._note_tool(attr_ns, attr_local, value)
            if attr_ns in (EXIF_NS, EXIFEX_NS) and attr_local in PROPERTIES:
                self._put(attr_local, value)
        parent = self._collecting[-1][0] if self._collecting else None
        if ns in (EXIF_NS, EXIFEX_NS) and local in PROPERTIES:
            self._collecting.append((local, []))
        elif (ns, local) == (XMP_NS, "CreatorTool"):
            self._collecting.append((_CREATOR_TOOL, []))
        elif parent is not None and ns == RDF_NS and local == "value":  # a qualified property
            self._collecting.append((parent, []))
        else:
            self._collecting.append((None, []))

    def _end(self, name: str) -> None:
        prop, parts = self._collecting.pop()
        text = "".join(parts).strip()
        if prop == _CREATOR_TOOL:
            self._note_tool(XMP_NS, "CreatorTool", text)
        elif prop is not None and text:
            self._put(prop, text)

    def _text(self, data: str) -> None:
        if self._collecting and self._collecting[-1][0] is not None:
            self._collecting[-1][1].append(data)

    def _put(self, prop: str, value: str) -> None:
        value = value.strip()
        seen = self.values.get(prop)
        if seen is None:
            self.values[prop] = value
        elif seen != value:
            self.conflict = self.conflict or prop

    def _note_tool(self, ns: str | None, local: str, value: str | None) -> None:
        if ns == GEOLOC_NS:
            self.by_geoloc = True
        elif value is not None and (ns, local) in ((X_NS, "xmptk"), (XMP_NS, "CreatorTool")):
            if value.strip().lower().startswith("geoloc"):
                self.by_geoloc = True


def _letter(value: Any) -> Any:
    return value.strip().upper()[:1] if isinstance(value, str) else value


def _split(name: str) -> tuple[str | None, str]:
    ns, sep, local = name.rpartition(_SEP)
    return (ns if sep else None), local


# --- XMP values as EXIF tag values ------------------------------------------------------------

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_COORDINATE_RE = re.compile(rf"^\s*({_NUMBER}(?:\s*/\s*\d+)?(?:\s*,\s*{_NUMBER}(?:\s*/\s*\d+)?){{0,2}})\s*([NSEW])?\s*$",
                            re.IGNORECASE)
_RATIONAL_RE = re.compile(rf"^\s*({_NUMBER})\s*(?:/\s*({_NUMBER}))?\s*$")


def _tag_values(name: str, text: str) -> dict[str, Any]:
    """One XMP property as the EXIF tag(s) it stands for."""
    if name in COORDINATES:
        return _coordinate(name, text)
    if name in ("GPSLatitudeRef", "GPSLongitudeRef"):
        return {name: text}
    if name == "GPSAltitudeRef":
        return {name: text}  # "0" / "1": read as EXIF's BYTE by the same rules
    match = _RATIONAL_RE.match(text)
    if not match:
        raise RefusedXmp(f"unreadable {name} {text[:40]!r}")
    numerator, denominator = match.groups()
    return {name: [(float(numerator), float(denominator)) if denominator else float(numerator)]}


def _coordinate(name: str, text: str) -> dict[str, Any]:
    """XMP's GPSCoordinate, ``DDD,MM,SSk`` or ``DDD,MM.mmk`` (XMP Specification Part 2), and
    what writers outside the specification produce: decimal degrees with or without the
    letter, a signed value, rationals such as ``55/1,41/1,5340/100N``.

    The letter is the reference, as ``GPSLatitudeRef`` is in EXIF. A minus sign with the
    opposite letter (``-12,30N``) says two things at once and is refused.
    """
    match = _COORDINATE_RE.match(text)
    if not match:
        raise RefusedXmp(f"unreadable {name} {text[:40]!r}")
    body, letter = match.group(1), match.group(2)
    values: list[Any] = []
    for part in body.split(","):
        numerator, _, denominator = part.partition("/")
        values.append((float(numerator), float(denominator)) if denominator.strip() else float(numerator))
    out: dict[str, Any] = {name: values}
    if letter:
        letter = letter.upper()
        if body.lstrip().startswith("-") and letter in "NE":
            raise RefusedXmp(f"{name} {text.strip()!r} has a minus sign and the letter {letter}")
        out[name + "Ref"] = letter
    return out
