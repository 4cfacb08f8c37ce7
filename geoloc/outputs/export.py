"""Estimates in the formats other tools read: exiftool CSV, GeoJSON, GPX, XMP sidecars.

Nothing here writes into a photo (that is :mod:`geoloc.outputs.writeback`, ``--write-exif``): these
files go beside the photos or to stdout, for exiftool, photo managers and GIS tools to apply
or show (the recipes are in docs/commands/locate.md).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, TextIO
from xml.sax.saxutils import quoteattr

from geoloc import __version__
from geoloc.files import atomic_write, display_path, json_path
from geoloc.locating.results import LocateResult
from geoloc.photos.tags import PROCESSING_METHOD  # geoloc's signature, read back by `index`
from geoloc.photos.xmp import GEOLOC_NS, written_by_geoloc

# exiftool's tag names. The Ref columns carry the hemisphere because exiftool (12.x) writes
# only the magnitude of a signed GPSLatitude into EXIF; with the Ref it stores the sign too.
# GPSHPositioningError is EXIF's own "horizontal positioning error in metres": the radius.
CSV_COLUMNS = (
    "SourceFile",
    "GPSLatitude",
    "GPSLongitude",
    "GPSLatitudeRef",
    "GPSLongitudeRef",
    "GPSHPositioningError",
    "GPSProcessingMethod",
    "Score",
    "Confidence",
)


#: What makes a spreadsheet (Excel, LibreOffice, Google Sheets) take a cell for a formula, as
#: OWASP lists it: ``=``, ``+``, ``-``, ``@``, and a tab or carriage return before one of them.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def formula_like(text: str) -> bool:
    """A cell a spreadsheet would run (``=HYPERLINK(…)``), were the CSV opened in one."""
    return text.startswith(FORMULA_STARTS)


def formula_like_names(results: Iterable[LocateResult]) -> int:
    """How many CSV rows would name a file that :func:`formula_like` catches."""
    return sum(1 for r in results if r.estimate is not None and formula_like(json_path(r.query)))


def write_csv(results: Iterable[LocateResult], out: TextIO, spreadsheet_safe: bool = False) -> int:
    """One row per query with an estimate; returns the number of rows written.

    Queries without an estimate (unreadable ones) have no row: an empty GPSLatitude would mean
    nothing useful to exiftool, and their errors are reported on stderr.

    ``SourceFile`` is the name exactly, as exiftool needs it, even one a spreadsheet would run
    as a formula (the caller warns); ``spreadsheet_safe`` prefixes such a cell with ``'``,
    which spreadsheets show as text, and which exiftool then takes for part of the name.
    """
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    rows = 0
    for r in results:
        if r.estimate is None:
            continue
        e = r.estimate
        score = r.candidates[0].score if r.candidates else None
        source = json_path(r.query)
        writer.writerow(
            [
                "'" + source if spreadsheet_safe and formula_like(source) else source,
                f"{e.lat:.7f}",
                f"{e.lon:.7f}",
                "N" if e.lat >= 0 else "S",
                "E" if e.lon >= 0 else "W",
                f"{e.radius_m:.1f}",
                PROCESSING_METHOD,
                "" if score is None else f"{score:.6f}",
                e.confidence,
            ]
        )
        rows += 1
    return rows


def to_geojson(results: Iterable[LocateResult]) -> dict:
    """An RFC 7946 FeatureCollection: one Point per query at its estimate (lon, lat order).

    A query without an estimate stays in the collection with a null geometry (RFC 7946 §3.2)
    and its error, so that the features line up one to one with the queries.
    """
    features = []
    for r in results:
        e = r.estimate
        geometry = (
            {"type": "Point", "coordinates": [round(e.lon, 7), round(e.lat, 7)]} if e else None
        )
        body = r.to_json()
        properties = {
            "query": body["query"],
            "radius_m": body["estimate"]["radius_m"] if e else None,
            "support": e.support if e else None,
            "agreement": body["estimate"]["agreement"] if e else None,
            "confidence": e.confidence if e else None,
            "score": body["candidates"][0]["score"] if body["candidates"] else None,
            "query_gps": body["query_gps"],
            "error_m": body["error_m"],
            "error": body["error"],
            "warnings": body["warnings"],
            "candidates": body["candidates"],
        }
        if "query_bytes" in body:  # a name that is not UTF-8, in bytes (see json_path_fields)
            properties = {"query": body["query"], "query_bytes": body["query_bytes"], **properties}
        features.append({"type": "Feature", "geometry": geometry, "properties": properties})
    return {"type": "FeatureCollection", "features": features}


def write_geojson(results: Iterable[LocateResult], out: TextIO) -> None:
    """A name that is not UTF-8 goes out as JSON's ``\\udcXX`` escape (as ``--json`` writes it),
    with its bytes in ``query_bytes``: raw, it could not be written as UTF-8 at all."""
    text = json.dumps(to_geojson(results), indent=2, ensure_ascii=False, allow_nan=False)
    out.write(_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n")


_SURROGATE = re.compile("[\ud800-\udfff]")


# --------------------------------------------------------------------------------------------
# GPX 1.1
# --------------------------------------------------------------------------------------------

GPX_NS = "http://www.topografix.com/GPX/1/1"


def to_gpx(results: Iterable[LocateResult]) -> str:
    """GPX 1.1 (topografix.com/GPX/1/1): one waypoint per estimate, in the schema's element order,
    then the photos of known UTC time as a track in time order (:func:`in_time_order`).

    GPX has no uncertainty element, so the radius is in the comment and description, and in
    geoloc's own extension elements for programs. ``<time>`` must be UTC: it is written only
    when the photo's EXIF gave its UTC offset; a local time without one goes in the description.
    """
    import xml.etree.ElementTree as ET

    results = list(results)
    ET.register_namespace("", GPX_NS)
    ET.register_namespace("geoloc", GEOLOC_NS)
    q = lambda tag: f"{{{GPX_NS}}}{tag}"  # noqa: E731
    root = ET.Element(q("gpx"), {"version": "1.1", "creator": f"geoloc {__version__}"})
    meta = ET.SubElement(root, q("metadata"))
    ET.SubElement(meta, q("name")).text = "geoloc estimates"
    ET.SubElement(meta, q("time")).text = _utc_now()
    for r in results:
        e = r.estimate
        if e is None:
            continue
        wpt = ET.SubElement(root, q("wpt"), {"lat": f"{e.lat:.7f}", "lon": f"{e.lon:.7f}"})
        utc, local = _gpx_time(r.taken_at)
        if r.taken_at_utc:  # the camera's clock corrected by geoloc.trips: no longer only a reading
            utc, local = r.taken_at_utc.replace("+00:00", "Z"), None
        if utc:
            ET.SubElement(wpt, q("time")).text = utc
        ET.SubElement(wpt, q("name")).text = _xml_text(Path(r.query).name)
        summary = f"radius {e.radius_m:.0f} m, confidence {e.confidence}"
        ET.SubElement(wpt, q("cmt")).text = summary
        taken = f"; taken {local} by the camera's clock (its zone unknown)" if local else ""
        ET.SubElement(wpt, q("desc")).text = _xml_text(f"geoloc estimate for {display_path(r.query)}: {summary}{taken}")
        ET.SubElement(wpt, q("src")).text = f"geoloc {__version__}"
        link = ET.SubElement(wpt, q("link"), {"href": _xml_text(Path(os.path.abspath(r.query)).as_uri())})
        ET.SubElement(link, q("text")).text = _xml_text(Path(r.query).name)
        ET.SubElement(wpt, q("type")).text = "geoloc estimate"
        ext = ET.SubElement(wpt, q("extensions"))
        for tag, value in (("radius_m", f"{e.radius_m:.1f}"), ("confidence", e.confidence),
                           ("verification", e.verification or ""), ("support", str(e.support))):
            ET.SubElement(ext, f"{{{GEOLOC_NS}}}{tag}").text = value
    _trip_track(root, q, results)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def in_time_order(results: Iterable[LocateResult]) -> list[tuple[str, LocateResult]]:
    """The located results whose UTC capture time is known (corrected by their camera's clock,
    or written with its zone), as ``(UTC time, result)`` in time order: a trip's path."""
    timed = []
    for r in results:
        if r.estimate is None:
            continue
        utc = r.taken_at_utc or _gpx_time(r.taken_at)[0]
        if utc:
            timed.append((utc.replace("+00:00", "Z"), r))
    return sorted(timed, key=lambda pair: pair[0])


def _trip_track(root, q, results) -> None:
    """After the waypoints (GPX's element order), the located photos as one track in time order,
    when two or more have a UTC time: what a map or a GPS app draws as the trip."""
    import xml.etree.ElementTree as ET

    timed = in_time_order(results)
    if len(timed) < 2:
        return
    trk = ET.SubElement(root, q("trk"))
    ET.SubElement(trk, q("name")).text = "geoloc: located photos in time order"
    seg = ET.SubElement(trk, q("trkseg"))
    for utc, r in timed:
        pt = ET.SubElement(seg, q("trkpt"), {"lat": f"{r.estimate.lat:.7f}", "lon": f"{r.estimate.lon:.7f}"})
        ET.SubElement(pt, q("time")).text = utc
        ET.SubElement(pt, q("name")).text = _xml_text(Path(r.query).name)


def write_gpx(results: Iterable[LocateResult], out: TextIO) -> None:
    out.write(to_gpx(results))


def _gpx_time(taken_at: str | None) -> tuple[str | None, str | None]:
    """(UTC xsd:dateTime, None) when the capture time has an offset, else (None, local time)."""
    from datetime import datetime, timezone

    if not taken_at:
        return None, None
    try:
        when = datetime.fromisoformat(taken_at)
    except ValueError:
        return None, None
    if when.tzinfo is None:
        return None, when.isoformat(sep=" ")
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), None


def _utc_now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


#: What XML 1.0 forbids (its ``Char`` production leaves out most controls, the surrogates, U+FFFE
#: and U+FFFF): one such character in a file name would make the whole document unreadable.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(text: str) -> str:
    """Text any XML 1.0 parser reads: controls and bytes that are not UTF-8 escaped as geoloc
    prints them (``\\x1b``, ``\\xff``), and whatever else XML forbids as ``\\uffff``."""
    from geoloc.files import printable

    return _NOT_XML.sub(lambda m: f"\\u{ord(m.group()):04x}", printable(text))


# --------------------------------------------------------------------------------------------
# XMP sidecars
# --------------------------------------------------------------------------------------------

_MARKER = f'xmlns:geoloc="{GEOLOC_NS}"'


@dataclass
class SidecarReport:
    written: list[Path] = field(default_factory=list)
    # (photo, reason): photos that already have GPS, sidecars we will not overwrite, errors.
    skipped: list[tuple[Path, str]] = field(default_factory=list)


SIDECAR_NAMINGS = ("stem", "full")
#: The ``SidecarReport.skipped`` reason for a photo that has GPS of its own (not a problem).
OWN_GPS = "the photo has its own GPS position"


def sidecar_path(photo: Path, naming: str = "stem") -> Path:
    """Where a photo's sidecar goes; photo managers disagree on the name.

    ``stem``: ``photo.jpg`` → ``photo.xmp`` (exiftool's ``%d%f.xmp``, Lightroom);
    ``full``: ``photo.jpg`` → ``photo.jpg.xmp`` (darktable, digiKam's default).
    """
    if naming == "full":
        return photo.with_name(photo.name + ".xmp")
    if naming != "stem":
        raise ValueError(f"unknown sidecar naming {naming!r}; choose one of {', '.join(SIDECAR_NAMINGS)}")
    return photo.with_suffix(".xmp")


def xmp_coordinate(value: float, positive: str, negative: str) -> str:
    """XMP's GPSCoordinate text, ``DDD,MM.mmmmmmK`` (XMP Specification Part 2, exif schema)."""
    ref = positive if value >= 0 else negative
    value = abs(value)
    degrees = int(value)
    minutes = (value - degrees) * 60.0
    if round(minutes, 6) >= 60.0:  # 12.9999999999° must not print as 12,60.000000
        degrees, minutes = degrees + 1, 0.0
    return f"{degrees},{minutes:09.6f}{ref}"


def xmp_sidecar(result: LocateResult) -> str:
    """The sidecar's text for one located query (the estimate as EXIF GPS in XMP)."""
    e = result.estimate
    if e is None:
        raise ValueError("no estimate to write")
    score = result.candidates[0].score if result.candidates else float("nan")
    attrs = {
        "exif:GPSVersionID": "2.3.0.0",
        "exif:GPSLatitude": xmp_coordinate(e.lat, "N", "S"),
        "exif:GPSLongitude": xmp_coordinate(e.lon, "E", "W"),
        "exif:GPSMapDatum": "WGS-84",
        "exif:GPSHPositioningError": f"{e.radius_m:.1f}",
        "exif:GPSProcessingMethod": PROCESSING_METHOD,
        "geoloc:Version": __version__,
        "geoloc:RadiusM": f"{e.radius_m:.1f}",
        "geoloc:Support": str(e.support),
        "geoloc:Confidence": e.confidence,
    }
    if math.isfinite(score):
        attrs["geoloc:Score"] = f"{score:.6f}"
    lines = "\n".join(f"    {k}={quoteattr(_xml_text(v))}" for k, v in attrs.items())
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        f'<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk={quoteattr(_xml_text("geoloc " + __version__))}>\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about=""\n'
        '    xmlns:exif="http://ns.adobe.com/exif/1.0/"\n'
        f"    {_MARKER}\n"
        f"{lines}/>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>\n'
    )


#: Why nothing is written for a photo located from the database whose file is not there now.
PHOTO_GONE = "the photo is no longer there (moved or deleted since it was indexed)"


def write_sidecars(results: Iterable[LocateResult], naming: str = "stem") -> SidecarReport:
    """Write an XMP sidecar next to every located query that has no GPS of its own.

    ``naming`` picks the file name (see :func:`sidecar_path`).

    An existing sidecar is replaced only when geoloc wrote it; anything else there (a photo
    manager's edits) is left alone and reported. Writes are atomic (temporary file + rename).
    """
    report = SidecarReport()
    claimed: set[Path] = set()
    for r in results:
        if r.estimate is None:
            continue
        photo = Path(r.query)
        if r.query_gps is not None:
            report.skipped.append((photo, OWN_GPS))
            continue
        if not photo.exists():  # located from its stored descriptor (--unlocated), moved since
            report.skipped.append((photo, PHOTO_GONE))
            continue
        target = sidecar_path(photo, naming)
        key = Path(os.path.abspath(target))
        if key in claimed:
            report.skipped.append((photo, f"{target.name} is already written for another photo"))
            continue
        try:
            if target.exists() and not _written_by_geoloc(target):
                report.skipped.append((photo, f"{target} exists and was not written by geoloc"))
                continue
            atomic_write(target, xmp_sidecar(r))
        except OSError as exc:
            report.skipped.append((photo, f"cannot write {target}: {exc.strerror or exc}"))
            continue
        claimed.add(key)
        report.written.append(target)
    return report


def _written_by_geoloc(path: Path) -> bool:
    """The one test of "geoloc wrote this sidecar", shared with indexing, which never reads
    such a sidecar back as a position (:func:`geoloc.photos.xmp.written_by_geoloc`)."""
    return written_by_geoloc(path)


def csv_text(results: Iterable[LocateResult]) -> str:
    buf = io.StringIO()
    write_csv(results, buf)
    return buf.getvalue()
