"""CSV for exiftool, GeoJSON, XMP sidecars: what other tools read back from them."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from geoloc.outputs.export import (
    CSV_COLUMNS,
    csv_text,
    sidecar_path,
    to_geojson,
    write_csv,
    write_geojson,
    write_sidecars,
    xmp_coordinate,
    xmp_sidecar,
)
from geoloc.locating.estimate import Estimate
from geoloc.locating.results import Candidate, LocateResult

EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool not installed (Debian: libimage-exiftool-perl)")


def _result(query, lat=-33.4489, lon=-70.6693, gps=None, error=None):
    if error:
        return LocateResult(Path(query), error=error)
    cand = Candidate(1, Path("/db/a.jpg"), lat, lon, 0.8123, 1.5)
    return LocateResult(Path(query), Estimate(lat, lon, 12.34, 3, 0.9), [cand], gps)


def test_csv_has_exiftool_columns_and_signed_degrees():
    buf = io.StringIO()
    n = write_csv([_result("q1.jpg"), _result("bad.jpg", error="bad"), _result("q2.jpg", 55.7, 13.19)], buf)
    assert n == 2
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert list(CSV_COLUMNS[:2]) == ["SourceFile", "GPSLatitude"]
    assert rows[0]["SourceFile"] == "q1.jpg"
    assert float(rows[0]["GPSLatitude"]) == pytest.approx(-33.4489)
    assert float(rows[0]["GPSLongitude"]) == pytest.approx(-70.6693)
    assert (rows[0]["GPSLatitudeRef"], rows[0]["GPSLongitudeRef"]) == ("S", "W")
    assert (rows[1]["GPSLatitudeRef"], rows[1]["GPSLongitudeRef"]) == ("N", "E")
    assert float(rows[0]["GPSHPositioningError"]) == pytest.approx(12.3)
    assert float(rows[0]["Score"]) == pytest.approx(0.8123)


def test_csv_quotes_awkward_file_names():
    buf = io.StringIO()
    write_csv([_result('a,"b"\nc.jpg')], buf)
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert rows[0]["SourceFile"] == 'a,"b"\nc.jpg'


def test_geojson_is_lon_lat_and_keeps_failed_queries():
    doc = to_geojson([_result("q1.jpg", gps=(-33.45, -70.67)), _result("bad.jpg", error="unreadable")])
    assert doc["type"] == "FeatureCollection"
    ok, bad = doc["features"]
    assert ok["type"] == "Feature"
    assert ok["geometry"] == {"type": "Point", "coordinates": [-70.6693, -33.4489]}
    assert ok["properties"]["radius_m"] == pytest.approx(12.3)
    assert ok["properties"]["query_gps"] == {"lat": -33.45, "lon": -70.67}
    assert ok["properties"]["error_m"] > 0
    assert ok["properties"]["candidates"][0]["rank"] == 1
    assert bad["geometry"] is None and bad["properties"]["error"] == "unreadable"
    buf = io.StringIO()
    write_geojson([_result("q1.jpg")], buf)
    assert json.loads(buf.getvalue())["features"][0]["geometry"]["type"] == "Point"


@pytest.mark.parametrize(
    "value,pos,neg,text",
    [
        (55.70485, "N", "S", "55,42.291000N"),
        (-33.5, "N", "S", "33,30.000000S"),
        (-70.25, "E", "W", "70,15.000000W"),
        (12.99999999999, "N", "S", "13,00.000000N"),
        (0.0, "E", "W", "0,00.000000E"),
    ],
)
def test_xmp_coordinates(value, pos, neg, text):
    assert xmp_coordinate(value, pos, neg) == text


def test_xmp_sidecar_is_well_formed_xml():
    text = xmp_sidecar(_result("q.jpg"))
    root = ET.fromstring(text.split("?>", 1)[1].rsplit("<?xpacket", 1)[0])
    desc = root.find(".//{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Description")
    exif = "{http://ns.adobe.com/exif/1.0/}"
    assert desc.get(exif + "GPSLatitude") == "33,26.934000S"
    assert desc.get(exif + "GPSLongitude") == "70,40.158000W"
    assert desc.get(exif + "GPSHPositioningError") == "12.3"


def test_sidecars_only_for_photos_without_gps_and_never_clobber(tmp_path):
    photo = tmp_path / "nogps.jpg"
    photo.write_bytes(b"not touched")
    located = tmp_path / "hasgps.jpg"
    foreign = tmp_path / "edited.jpg"
    foreign.write_bytes(b"a photo")
    foreign_xmp = tmp_path / "edited.xmp"
    foreign_xmp.write_text("<x:xmpmeta>a photo manager's edits</x:xmpmeta>")
    report = write_sidecars(
        [
            _result(photo),
            _result(located, gps=(1.0, 2.0)),
            _result(foreign),
            _result(tmp_path / "broken.jpg", error="unreadable"),
        ]
    )
    assert report.written == [sidecar_path(photo)]
    assert photo.read_bytes() == b"not touched"
    assert not sidecar_path(located).exists()
    assert foreign_xmp.read_text() == "<x:xmpmeta>a photo manager's edits</x:xmpmeta>"
    assert {p.name for p, _ in report.skipped} == {"hasgps.jpg", "edited.jpg"}
    assert "was not written by geoloc" in dict((p.name, r) for p, r in report.skipped)["edited.jpg"]
    # Our own sidecar is replaced on the next run.
    report = write_sidecars([_result(photo, lat=10.0, lon=20.0)])
    assert report.written == [sidecar_path(photo)]
    assert "10,00.000000N" in sidecar_path(photo).read_text()
    assert not list(tmp_path.glob(".*tmp"))


def test_a_sidecar_that_cannot_be_written_is_reported_not_raised(tmp_path):
    # The photo's folder has gone since it was located: said so, and nothing is written for it
    # (a written-to folder that is read-only would be "cannot write", but tests run as root in CI).
    (tmp_path / "b.jpg").write_bytes(b"a photo")
    report = write_sidecars([_result(tmp_path / "gone" / "a.jpg"), _result(tmp_path / "b.jpg")])
    assert report.written == [tmp_path / "b.xmp"]
    assert report.skipped[0][0].name == "a.jpg" and "no longer there" in report.skipped[0][1]


def test_a_sidecar_write_that_fails_is_reported_not_raised(tmp_path, monkeypatch):
    """A full disk (or a read-only folder, which root would not see) while writing: one
    reason naming the sidecar and the OS's word for it; the run goes on."""
    import errno

    from geoloc.outputs import export

    def full(target, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    (tmp_path / "c.jpg").write_bytes(b"a photo")
    monkeypatch.setattr(export, "atomic_write", full)
    report = write_sidecars([_result(tmp_path / "c.jpg")])
    assert report.written == []
    assert report.skipped == [(tmp_path / "c.jpg", f"cannot write {tmp_path / 'c.xmp'}: No space left on device")]


@needs_exiftool
def test_exiftool_reads_our_sidecar(tmp_path):
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"a photo")
    write_sidecars([_result(photo)])
    out = subprocess.run(
        [EXIFTOOL, "-j", "-n", "-GPSLatitude", "-GPSLongitude", "-GPSHPositioningError",
         str(sidecar_path(photo))],
        capture_output=True, text=True, check=True,
    )
    tags = json.loads(out.stdout)[0]
    assert tags["GPSLatitude"] == pytest.approx(-33.4489, abs=1e-6)
    assert tags["GPSLongitude"] == pytest.approx(-70.6693, abs=1e-6)
    assert tags["GPSHPositioningError"] == pytest.approx(12.3)


@needs_exiftool
def test_exiftool_applies_our_csv(tmp_path, exif_dir):
    # A real photo whose GPS block holds only a version tag, i.e. no position.
    photo = tmp_path / "Canon_40D.jpg"
    shutil.copy(exif_dir / "jpg" / "Canon_40D.jpg", photo)
    csv_file = tmp_path / "estimates.csv"
    with open(csv_file, "w", newline="") as f:
        write_csv([_result(photo)], f)
    subprocess.run([EXIFTOOL, "-q", "-overwrite_original", f"-csv={csv_file}", str(photo)], check=True)
    out = subprocess.run([EXIFTOOL, "-j", "-n", "-GPSLatitude", "-GPSLongitude", str(photo)],
                         capture_output=True, text=True, check=True)
    tags = json.loads(out.stdout)[0]
    assert tags["GPSLatitude"] == pytest.approx(-33.4489, abs=1e-6)
    assert tags["GPSLongitude"] == pytest.approx(-70.6693, abs=1e-6)


def test_confidence_travels_to_every_format(tmp_path):
    """Why: a `low` estimate applied blindly with exiftool would tag a photo with a guess; each
    format must carry the confidence so the user can filter."""
    from geoloc.locating.estimate import assess_confidence

    r = _result("doubt.jpg")
    assess_confidence(r.estimate, 0.1, 0.3)
    rows = list(csv.DictReader(io.StringIO(csv_text([r]))))
    assert rows[0]["Confidence"] == "low"
    props = to_geojson([r])["features"][0]["properties"]
    assert props["confidence"] == "low" and any("weak match" in w for w in props["warnings"])
    assert 'geoloc:Confidence="low"' in xmp_sidecar(r)


# --------------------------------------------------------------------------------------------
# Issue 19: names that break XML, names a spreadsheet runs
# --------------------------------------------------------------------------------------------

XML_FORBIDDEN_NAMES = ["noncharacter\ufffe.jpg", "noncharacter\uffff.jpg", "bell\x07.jpg", "form\x0cfeed.jpg"]


def test_gpx_stays_well_formed_whatever_the_file_names():
    """One photo named with U+FFFE or U+FFFF (which XML 1.0 forbids) must not make the whole GPX
    unreadable: a real parser reads every waypoint, the name escaped as geoloc prints it."""
    from geoloc.outputs.export import to_gpx

    results = [_result(f"/photos/{name}") for name in XML_FORBIDDEN_NAMES] + [_result("/photos/plain.jpg")]
    text = to_gpx(results)
    root = ET.fromstring(text)
    names = [w.find("{http://www.topografix.com/GPX/1/1}name").text
             for w in root.iter("{http://www.topografix.com/GPX/1/1}wpt")]
    assert names == ["noncharacter\\ufffe.jpg", "noncharacter\\uffff.jpg", "bell\\x07.jpg", "form\\x0cfeed.jpg",
                     "plain.jpg"]
    gpxpy = pytest.importorskip("gpxpy")
    assert len(gpxpy.parse(text).waypoints) == 5


def test_xmp_sidecars_are_well_formed_xml_beside_any_photo(tmp_path):
    for name in XML_FORBIDDEN_NAMES:
        photo = tmp_path / name
        photo.write_bytes(b"a photo")
        write_sidecars([_result(photo)])
        text = sidecar_path(photo).read_text(encoding="utf-8")
        ET.fromstring(text.split("?>", 1)[1].rsplit("<?xpacket", 1)[0])


def test_csv_names_a_spreadsheet_would_run_are_exact_or_spreadsheet_safe():
    """exiftool needs the exact name, so by default it stays as it is (the CLI warns); the
    spreadsheet-safe form starts each such cell with ' and leaves the others alone."""
    from geoloc.outputs.export import formula_like_names

    names = ["=HYPERLINK(\"x\";\"y\")x.jpg", "+1.jpg", "-2.jpg", "@SUM(A1).jpg", "plain.jpg", "a=b.jpg"]
    results = [_result(n) for n in names]
    exact = [r["SourceFile"] for r in csv.DictReader(io.StringIO(csv_text(results)))]
    assert exact == names
    assert formula_like_names(results) == 4
    buf = io.StringIO()
    write_csv(results, buf, spreadsheet_safe=True)
    safe = [r["SourceFile"] for r in csv.DictReader(io.StringIO(buf.getvalue()))]
    assert safe == ["'" + n for n in names[:4]] + names[4:]
