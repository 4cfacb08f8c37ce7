"""GPS from where photographers keep it: XMP sidecars and Google Takeout JSON, next to real
photos whose own EXIF holds no position (a Lund photo saved again without its EXIF).

The sidecars follow what each tool writes: digiKam and darktable (``photo.jpg.xmp``, properties
as attributes), Lightroom (``photo.xmp``), exiftool (elements; Immich writes its sidecars with
exiftool), Google Takeout (``.json`` and ``.supplemental-metadata.json``, cut names, counters).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from geoloc.cli import app
from geoloc.locating.estimate import Estimate
from geoloc.outputs.export import write_sidecars, xmp_sidecar
from geoloc.locating.results import LocateResult
from geoloc.photos import read_meta
from geoloc.photos.sidecars import find_sidecars, sidecar_names
from geoloc.photos.takeout import takeout_names
from geoloc.photos.xmp import parse_xmp

EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool not installed")

PARIS = (48.8867, 2.3431)  # the Sacré-Cœur
LUND_01 = (55.698167, 13.195389)


def gpsless(lund_dir: Path, folder: Path, name: str = "photo.jpg", source: str = "01.jpg") -> Path:
    """A real Lund photo without any EXIF (so without its GPS), 320 px wide."""
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.open(lund_dir / source)
    image.thumbnail((320, 320))
    path = folder / name
    image.save(path, quality=90)
    return path


def xmp_packet(description: str, body: str = "", xmptk: str = "XMP Core 4.4.0-Exiv2") -> str:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        f'<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="{xmptk}">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        f"  <rdf:Description rdf:about=\"\" {description}>{body}</rdf:Description>\n"
        " </rdf:RDF>\n</x:xmpmeta>\n<?xpacket end=\"w\"?>\n"
    )


def digikam_xmp(lat: str = "48,53.202000N", lon: str = "2,20.586000E") -> str:
    """As digiKam (Exiv2) writes a position set on its map: attributes, decimal minutes."""
    return xmp_packet(
        'xmlns:exif="http://ns.adobe.com/exif/1.0/" xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
        'xmlns:digiKam="http://www.digikam.org/ns/1.0/" '
        'exif:GPSVersionID="2.0.0.0" exif:GPSMapDatum="WGS-84" '
        f'exif:GPSLatitude="{lat}" exif:GPSLongitude="{lon}" '
        'exif:GPSAltitudeRef="0" exif:GPSAltitude="13000/100" tiff:Orientation="1"',
        '<digiKam:TagsList><rdf:Seq><rdf:li>Paris</rdf:li></rdf:Seq></digiKam:TagsList>')


def lightroom_xmp(lat: str = "48,53,12.12N", lon: str = "2,20,35.16E") -> str:
    """As Lightroom Classic writes a RAW's sidecar: attributes next to develop settings."""
    return xmp_packet(
        'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/" '
        'xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/" '
        'xmp:CreatorTool="Adobe Photoshop Lightroom Classic 13.0 (Windows)" '
        f'exif:GPSLatitude="{lat}" exif:GPSLongitude="{lon}" '
        'crs:Version="16.0" crs:WhiteBalance="As Shot"',
        xmptk="Adobe XMP Core 7.0-c000 1.000000, 0000/00/00-00:00:00")


def darktable_xmp() -> str:
    return xmp_packet(
        'xmlns:exif="http://ns.adobe.com/exif/1.0/" xmlns:darktable="http://darktable.sf.net/" '
        'exif:DateTimeOriginal="2024:05:01 10:00:00" exif:GPSLatitude="48,53.202000N" '
        'exif:GPSLongitude="2,20.586000E" exif:GPSAltitude="130/1" darktable:xmp_version="5"',
        '<darktable:history><rdf:Seq/></darktable:history>', xmptk="XMP Core 4.4.0-Exiv2")


def takeout_json(lat=PARIS[0], lon=PARIS[1], alt=130.0, title="photo.jpg", exif_block=None) -> str:
    doc = {"title": title, "description": "", "imageViews": "3",
           "photoTakenTime": {"timestamp": "1714557600", "formatted": "1 May 2024, 10:00:00 UTC"},
           "geoData": {"latitude": lat, "longitude": lon, "altitude": alt,
                       "latitudeSpan": 0.0, "longitudeSpan": 0.0},
           "geoDataExif": exif_block or {"latitude": 0.0, "longitude": 0.0, "altitude": 0.0,
                                         "latitudeSpan": 0.0, "longitudeSpan": 0.0}}
    return json.dumps(doc, indent=2)


def geoloc_result(photo: Path, lat: float = PARIS[0], lon: float = PARIS[1]) -> LocateResult:
    estimate = Estimate(lat=lat, lon=lon, radius_m=12.0, support=3, agreement=0.9, considered=5,
                        confidence="high")
    return LocateResult(query=photo, estimate=estimate, candidates=[])


# --- the XMP forms ----------------------------------------------------------------------------


@pytest.mark.parametrize("lat, lon, expected", [
    ("48,53.202N", "2,20.586E", PARIS),                # XMP's DDD,MM.mmk
    ("48,53,12.12N", "2,20,35.16E", PARIS),            # XMP's DDD,MM,SSk
    ("48.8867N", "2.3431E", PARIS),                    # decimal with a letter
    ("48.8867", "-2.3431", (PARIS[0], -PARIS[1])),      # signed decimal, no letter
    ("33,26.934S", "70,40.158W", (-33.4489, -70.6693)),
    ("48/1,532020/10000N", "2/1,205860/10000E", PARIS),  # rationals
    ("48,53.202n", "2,20.586e", PARIS),                # a lower-case letter
])
def test_xmp_coordinate_forms(lat, lon, expected, tmp_path, lund_dir):
    photo = gpsless(lund_dir, tmp_path)
    (tmp_path / "photo.jpg.xmp").write_text(digikam_xmp(lat, lon), encoding="utf-8")
    meta = read_meta(photo)
    assert (meta.lat, meta.lon) == pytest.approx(expected, abs=1e-5)
    assert meta.gps_source == "xmp"


@pytest.mark.parametrize("lat, lon, why", [
    ("-48,53.202N", "2,20.586E", "minus sign and the letter N"),
    ("91,0.0N", "2,20.586E", "out of range"),
    ("48,61.0N", "2,20.586E", "out of range"),
    ("48,53.202E", "2,20.586E", "reference"),          # a latitude marked east
    ("north-ish", "2,20.586E", "unreadable"),
    ("0,0.0N", "0,0.0E", "(0, 0)"),
])
def test_doubtful_xmp_coordinates_are_no_position(lat, lon, why, tmp_path, lund_dir):
    photo = gpsless(lund_dir, tmp_path)
    (tmp_path / "photo.jpg.xmp").write_text(digikam_xmp(lat, lon), encoding="utf-8")
    meta = read_meta(photo)
    assert meta.lat is None and meta.gps_source is None
    assert "photo.jpg.xmp" in meta.no_position_reason and why in meta.no_position_reason


def test_xmp_elements_qualifiers_and_split_descriptions():
    """exiftool writes elements, some tools qualify a value (rdf:value), others split the
    schemas over several rdf:Description blocks: all count."""
    doc = parse_xmp(b"""<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
      <rdf:Description rdf:about="" xmlns:e="http://ns.adobe.com/exif/1.0/"><e:GPSLatitude>48,53.202N</e:GPSLatitude></rdf:Description>
      <rdf:Description rdf:about="" xmlns:exif="http://ns.adobe.com/exif/1.0/">
        <exif:GPSLongitude rdf:parseType="Resource"><rdf:value>2,20.586E</rdf:value></exif:GPSLongitude>
        <exif:GPSAltitude>130/1</exif:GPSAltitude></rdf:Description></rdf:RDF></x:xmpmeta>""")
    assert doc.error is None and not doc.by_geoloc
    assert doc.tags == {"GPSLatitude": [48.0, 53.202], "GPSLatitudeRef": "N", "GPSLongitude": [2.0, 20.586],
                        "GPSLongitudeRef": "E", "GPSAltitude": [(130.0, 1.0)]}


def test_padded_and_utf16_sidecars():
    text = digikam_xmp()
    assert parse_xmp(text.encode("utf-8") + b"\x00" * 2048 + b"\n").tags["GPSLatitudeRef"] == "N"
    assert parse_xmp(text.replace("\ufeff", "").encode("utf-16")).tags["GPSLongitude"] == [2.0, 20.586]


def test_an_xmp_that_says_two_things_is_no_position():
    doc = parse_xmp(xmp_packet('xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:GPSLatitude="48,53.2N"',
                               "<exif:GPSLatitude>50,1.0N</exif:GPSLatitude>").encode())
    assert doc.tags == {} and "two different GPSLatitude" in doc.error


@pytest.mark.parametrize("attack", [
    # billion laughs: entities that expand to gigabytes
    '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><x:xmpmeta xmlns:x="adobe:ns:meta/">&c;</x:xmpmeta>',
    # an external entity: a file of the machine read into the document
    '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/">&e;</x:xmpmeta>',
    '<!DOCTYPE x><x:xmpmeta xmlns:x="adobe:ns:meta/"/>',
])
def test_xml_with_a_dtd_is_refused(attack, tmp_path, lund_dir):
    photo = gpsless(lund_dir, tmp_path)
    (tmp_path / "photo.jpg.xmp").write_text(attack, encoding="utf-8")
    meta = read_meta(photo)
    assert meta.lat is None and "DOCTYPE" in meta.no_position_reason


def test_broken_and_huge_sidecars_cost_nothing(tmp_path, lund_dir):
    photo = gpsless(lund_dir, tmp_path)
    (tmp_path / "photo.jpg.xmp").write_bytes(b"\x00\xff garbage <not xml")
    assert "not valid XML" in read_meta(photo).no_position_reason
    with open(tmp_path / "photo.jpg.xmp", "wb") as fh:
        fh.truncate(17 << 20)
    assert "not read" in read_meta(photo).no_position_reason


# --- digiKam, Lightroom, darktable, exiftool: the sidecars as the tools write them -------------


def test_digikam_sidecar_gives_its_position(tmp_path, lund_dir):
    photo = gpsless(lund_dir, tmp_path)
    (tmp_path / "photo.jpg.xmp").write_text(digikam_xmp(), encoding="utf-8")
    meta = read_meta(photo)
    assert (meta.lat, meta.lon, meta.alt) == pytest.approx((*PARIS, 130.0), abs=1e-5)
    assert meta.gps_source == "xmp"


def test_lightroom_sidecar_gives_its_position(tmp_path, lund_dir):
    photo = gpsless(lund_dir, tmp_path)
    (tmp_path / "photo.xmp").write_text(lightroom_xmp(), encoding="utf-8")
    meta = read_meta(photo)
    assert (meta.lat, meta.lon) == pytest.approx(PARIS, abs=1e-5) and meta.gps_source == "xmp"


def test_darktable_sidecar_and_upper_case_names(tmp_path, lund_dir):
    photo = gpsless(lund_dir, tmp_path, "IMG_0001.JPG")
    (tmp_path / "IMG_0001.JPG.XMP").write_text(darktable_xmp(), encoding="utf-8")
    assert read_meta(photo).lat == pytest.approx(PARIS[0], abs=1e-5)


@needs_exiftool
def test_exiftool_written_sidecar(tmp_path, lund_dir):
    """exiftool (which Immich uses for its sidecars) writes XMP elements from signed decimals."""
    photo = gpsless(lund_dir, tmp_path)
    subprocess.run([EXIFTOOL, "-q", "-o", str(tmp_path / "photo.jpg.xmp"), "-XMP-exif:GPSLatitude=-33.4489",
                    "-XMP-exif:GPSLongitude=-70.6693", "-XMP-exif:GPSAltitude=570",
                    "-XMP-exif:GPSAltitudeRef=0"], check=True)
    meta = read_meta(photo)
    assert (meta.lat, meta.lon, meta.alt) == pytest.approx((-33.4489, -70.6693, 570.0), abs=1e-5)


def test_the_full_name_wins_over_the_shared_one(tmp_path, lund_dir):
    """``photo.jpg.xmp`` is this file's own; ``photo.xmp`` may be its RAW twin's."""
    photo = gpsless(lund_dir, tmp_path)
    (tmp_path / "photo.xmp").write_text(lightroom_xmp("33,26.934S", "70,40.158W"), encoding="utf-8")
    (tmp_path / "photo.jpg.xmp").write_text(digikam_xmp(), encoding="utf-8")
    assert read_meta(photo).lat == pytest.approx(PARIS[0], abs=1e-5)
    assert [s.path.name for s in find_sidecars(photo)] == ["photo.jpg.xmp", "photo.xmp"]


def test_exif_wins_over_a_disagreeing_sidecar(tmp_path, lund_dir):
    tmp_path.mkdir(exist_ok=True)
    photo = tmp_path / "01.jpg"
    shutil.copy2(lund_dir / "01.jpg", photo)
    (tmp_path / "01.jpg.xmp").write_text(digikam_xmp(), encoding="utf-8")
    (tmp_path / "01.jpg.json").write_text(takeout_json(title="01.jpg"), encoding="utf-8")
    meta = read_meta(photo)
    assert (meta.lat, meta.lon) == pytest.approx(LUND_01, abs=1e-5) and meta.gps_source == "exif"


# --- XMP inside the photo (Adobe's software, GIMP) ---------------------------------------------

#: As in mapillary_tools' tests/data/adobe_coords/adobe_coords.jpg (Camera Raw, then GIMP):
#: exiftool reads ``0 deg 4' 12.96" S``, ``34 deg 22' 54.97" E``; its EXIF holds no GPS.
ADOBE = (-0.0702668, 34.3819352)


def adobe_packet(lat: str = "0,4.21601S", lon: str = "34,22.91611E") -> bytes:
    return xmp_packet(
        'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/" '
        'xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/" crs:Version="7.0" '
        'exif:ExifVersion="0230" exif:GPSAltitude="136169/100" exif:GPSAltitudeRef="0" '
        f'exif:GPSLatitude="{lat}" exif:GPSLongitude="{lon}" exif:GPSMapDatum="WGS84" '
        'xmp:CreatorTool="GIMP 2.10"').encode("utf-8")


def with_embedded_xmp(lund_dir: Path, folder: Path, packet: bytes, name: str = "photo.jpg",
                      keep_exif: bool = False) -> Path:
    """A real Lund photo whose only GPS is an XMP APP1 segment (``http://ns.adobe.com/xap/1.0/``)
    inside it; ``keep_exif``: its own EXIF (with the camera's GPS) too."""
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.open(lund_dir / "01.jpg")
    extra = {"exif": image.info["exif"]} if keep_exif else {}
    path = folder / name
    image.save(path, quality=90, xmp=packet, **extra)
    return path


def test_gps_in_embedded_xmp_is_read(tmp_path, lund_dir):
    photo = with_embedded_xmp(lund_dir, tmp_path, adobe_packet())
    meta = read_meta(photo)
    assert (meta.lat, meta.lon, meta.alt) == pytest.approx((*ADOBE, 1361.69), abs=1e-6)
    assert meta.gps_source == "xmp-embedded" and meta.no_position_reason is None
    assert read_meta(photo, sidecars=False).gps_source == "xmp-embedded"  # the file's own
    if EXIFTOOL:  # the same position as exiftool reads it from the same segment
        out = subprocess.run([EXIFTOOL, "-n", "-s3", "-XMP-exif:GPSLatitude", "-XMP-exif:GPSLongitude",
                              "-EXIF:GPSLatitude", str(photo)], capture_output=True, text=True, check=True)
        assert [float(v) for v in out.stdout.split()] == pytest.approx(ADOBE, abs=1e-6)  # and no EXIF GPS


def test_exif_wins_over_embedded_xmp_which_wins_over_sidecars(tmp_path, lund_dir):
    photo = with_embedded_xmp(lund_dir, tmp_path / "both", adobe_packet(), keep_exif=True)
    meta = read_meta(photo)
    assert (meta.lat, meta.lon) == pytest.approx(LUND_01, abs=1e-5) and meta.gps_source == "exif"
    photo = with_embedded_xmp(lund_dir, tmp_path / "sidecar", adobe_packet())
    (photo.parent / "photo.jpg.xmp").write_text(digikam_xmp(), encoding="utf-8")
    meta = read_meta(photo)
    assert (meta.lat, meta.lon) == pytest.approx(ADOBE, abs=1e-6) and meta.gps_source == "xmp-embedded"


def test_doubtful_or_hostile_embedded_xmp_is_no_position_and_says_so(tmp_path, lund_dir):
    photo = with_embedded_xmp(lund_dir, tmp_path / "range", adobe_packet(lat="91,0.0S"))
    meta = read_meta(photo)
    assert meta.lat is None and "its embedded XMP: GPS latitude out of range" in meta.no_position_reason
    laughs = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>'
              b'<x:xmpmeta xmlns:x="adobe:ns:meta/">&b;</x:xmpmeta>')
    photo = with_embedded_xmp(lund_dir, tmp_path / "dtd", laughs)
    (photo.parent / "photo.jpg.xmp").write_text(digikam_xmp(), encoding="utf-8")
    meta = read_meta(photo)  # refused, and the sidecar asked next
    assert meta.gps_source == "xmp" and meta.lat == pytest.approx(PARIS[0], abs=1e-5)
    (photo.parent / "photo.jpg.xmp").unlink()
    assert "its embedded XMP: has a DOCTYPE" in read_meta(photo).no_position_reason
    # XMP without GPS (most cameras' and editors') adds nothing to the reason.
    photo = with_embedded_xmp(lund_dir, tmp_path / "plain", xmp_packet('xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
                                                                       'xmp:Rating="3"').encode())
    assert read_meta(photo).no_position_reason == "no EXIF data"


def test_index_and_photos_name_the_embedded_xmp(tmp_path, lund_dir, tiny_model):
    photos = tmp_path / "photos"
    with_embedded_xmp(lund_dir, photos, adobe_packet(), "adobe.jpg")
    report = _index(photos, tmp_path / "db", tiny_model)
    assert (report["located"], report["unlocated"]) == (1, 0)
    row = _photos(tmp_path / "db")["adobe.jpg"]
    assert row["gps_source"] == "xmp-embedded" and row["lat"] == pytest.approx(ADOBE[0], abs=1e-6)
    text = CliRunner().invoke(app, ["photos", "--db", str(tmp_path / "db")]).stdout
    assert "(from its embedded XMP)" in text


# --- geoloc's own sidecars are never truth ---------------------------------------------------


def test_a_sidecar_geoloc_wrote_is_never_read_back(tmp_path, lund_dir):
    photo = gpsless(lund_dir, tmp_path)
    report = write_sidecars([geoloc_result(photo)], naming="full")
    assert report.written == [tmp_path / "photo.jpg.xmp"]
    meta = read_meta(photo)
    assert meta.lat is None and meta.gps_source is None
    assert "written by geoloc" in meta.no_position_reason


@pytest.mark.parametrize("rewrite", ["prefix", "quotes", "xmptk", "creator_tool"])
def test_geoloc_sidecars_stay_recognised_when_a_photo_manager_rewrites_them(rewrite, tmp_path, lund_dir):
    """A photo manager that re-saves a sidecar changes prefixes and quoting: the estimate must
    still be recognised as geoloc's."""
    photo = gpsless(lund_dir, tmp_path)
    text = xmp_sidecar(geoloc_result(photo))
    if rewrite == "prefix":
        text = text.replace("geoloc:", "ns1:").replace("xmlns:geoloc=", "xmlns:ns1=")
    elif rewrite == "quotes":
        text = text.replace('xmlns:geoloc="http://geoloc.invalid/ns/1.0/"',
                            "xmlns:geoloc='http://geoloc.invalid/ns/1.0/'")
    elif rewrite == "xmptk":  # geoloc's own properties dropped, the toolkit name kept
        text = xmp_packet('xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:GPSLatitude="48,53.2N" '
                          'exif:GPSLongitude="2,20.5E"', xmptk="geoloc 0.1.0")
    else:
        text = xmp_packet('xmlns:exif="http://ns.adobe.com/exif/1.0/" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
                          'exif:GPSLatitude="48,53.2N" exif:GPSLongitude="2,20.5E"',
                          "<xmp:CreatorTool>geoloc 0.1.0</xmp:CreatorTool>")
    (tmp_path / "photo.xmp").write_text(text, encoding="utf-8")
    assert read_meta(photo).lat is None


def test_write_sidecars_replaces_only_its_own(tmp_path, lund_dir):
    photo = gpsless(lund_dir, tmp_path)
    (tmp_path / "photo.xmp").write_text(lightroom_xmp(), encoding="utf-8")
    report = write_sidecars([geoloc_result(photo)])
    assert report.written == [] and "not written by geoloc" in report.skipped[0][1]


# --- Google Takeout ---------------------------------------------------------------------------


def test_takeout_names():
    assert [n.name for n in takeout_names("photo.jpg")] == [
        "photo.jpg.supplemental-metadata.json", "photo.jpg.json"]
    names = {n.name: n.title for n in takeout_names("photo(1).jpg")}
    assert names["photo.jpg(1).json"] == "photo.jpg"
    assert names["photo.jpg.supplemental-metadata(1).json"] == "photo.jpg"
    assert names["photo(1).jpg.json"] is None
    long = "Urlaub in Knaufspesch in der Schneifel (38).JPG"  # a name from a real export
    assert takeout_names(long)[0].name == "Urlaub in Knaufspesch in der Schneifel (38).JP.json"
    assert takeout_names(long)[0].title == long
    shot = "Screenshot_2017-07-05-10-05-26.png"
    assert takeout_names(shot)[0].name == "Screenshot_2017-07-05-10-05-26.png.supplementa.json"
    assert {n.name for n in takeout_names("photo-edited.jpg")} >= {"photo.jpg.json"}


@pytest.mark.parametrize("photo_name, json_name, title", [
    ("photo.jpg", "photo.jpg.json", "photo.jpg"),
    ("photo.jpg", "photo.jpg.supplemental-metadata.json", "photo.jpg"),
    ("IMG_20240501_100000123_HDR.jpg", "IMG_20240501_100000123_HDR.jpg.supplemental-me.json",
     "IMG_20240501_100000123_HDR.jpg"),
    ("a_long_file_name_from_a_phone_2024_05_01_12.jpg", "a_long_file_name_from_a_phone_2024_05_01_12.jp.json",
     "a_long_file_name_from_a_phone_2024_05_01_12.jpg"),
    ("photo(1).jpg", "photo.jpg(1).json", "photo.jpg"),
    ("photo-edited.jpg", "photo.jpg.json", "photo.jpg"),
])
def test_takeout_sidecar_gives_its_position(photo_name, json_name, title, tmp_path, lund_dir):
    photo = gpsless(lund_dir, tmp_path, photo_name)
    (tmp_path / json_name).write_text(takeout_json(title=title), encoding="utf-8")
    meta = read_meta(photo)
    assert (meta.lat, meta.lon, meta.alt) == pytest.approx((*PARIS, 130.0), abs=1e-6)
    assert meta.gps_source == "takeout"


def test_a_cut_name_counts_only_with_its_title(tmp_path, lund_dir):
    """Two long names that start alike share a cut JSON name: only the title can tell."""
    name = "a_long_file_name_from_a_phone_2024_05_01_12.jpg"
    photo = gpsless(lund_dir, tmp_path, name)
    other = gpsless(lund_dir, tmp_path, "a_long_file_name_from_a_phone_2024_05_01_12.jpeg")
    (tmp_path / "a_long_file_name_from_a_phone_2024_05_01_12.jp.json").write_text(
        takeout_json(title=name), encoding="utf-8")
    assert read_meta(photo).gps_source == "takeout"
    meta = read_meta(other)
    assert meta.lat is None and "title" in meta.no_position_reason


def test_takeout_zero_means_none_and_exif_block_is_the_fallback(tmp_path, lund_dir):
    photo = gpsless(lund_dir, tmp_path)
    (tmp_path / "photo.jpg.json").write_text(takeout_json(0.0, 0.0, 0.0), encoding="utf-8")
    meta = read_meta(photo)
    assert meta.lat is None and "0, 0" in meta.no_position_reason
    (tmp_path / "photo.jpg.json").write_text(takeout_json(
        0.0, 0.0, 0.0, exif_block={"latitude": -33.4489, "longitude": -70.6693, "altitude": 0.0}),
        encoding="utf-8")
    meta = read_meta(photo)
    assert (meta.lat, meta.lon, meta.alt) == (pytest.approx(-33.4489), pytest.approx(-70.6693), None)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"geoData": "here"}',
                                     '{"geoData": {"latitude": "x", "longitude": true}}',
                                     '{"geoData": {"latitude": 95.0, "longitude": 2.0}}', "[" * 100000])
def test_bad_takeout_json_is_no_position(content, tmp_path, lund_dir):
    photo = gpsless(lund_dir, tmp_path)
    (tmp_path / "photo.jpg.json").write_text(content, encoding="utf-8")
    meta = read_meta(photo)
    assert meta.lat is None and "photo.jpg.json" in meta.no_position_reason


def test_xmp_wins_over_takeout(tmp_path, lund_dir):
    photo = gpsless(lund_dir, tmp_path)
    (tmp_path / "photo.jpg.json").write_text(takeout_json(-33.4489, -70.6693), encoding="utf-8")
    (tmp_path / "photo.xmp").write_text(lightroom_xmp(), encoding="utf-8")
    assert read_meta(photo).gps_source == "xmp"
    kinds = [k for k, _, _ in sidecar_names("photo.jpg")]
    assert kinds.index("takeout") > max(i for i, k in enumerate(kinds) if k == "xmp")


# --- geoloc index and geoloc photos ----------------------------------------------------------


def _index(photos: Path, db: Path, model: str) -> dict:
    result = CliRunner().invoke(app, ["index", str(photos), "--db", str(db), "--model", model, "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return json.loads(result.stdout)


def _photos(db: Path, *args: str) -> dict:
    result = CliRunner().invoke(app, ["photos", "--db", str(db), "--json", *args])
    assert result.exit_code == 0, result.output
    return {Path(p["path"]).name: p for p in json.loads(result.stdout)}


def test_index_takes_positions_from_sidecars(tmp_path, lund_dir, tiny_model):
    photos = tmp_path / "photos"
    gpsless(lund_dir, photos, "digikam.jpg")
    (photos / "digikam.jpg.xmp").write_text(digikam_xmp(), encoding="utf-8")
    gpsless(lund_dir, photos, "lightroom.jpg", "03.jpg")
    (photos / "lightroom.xmp").write_text(lightroom_xmp(), encoding="utf-8")
    gpsless(lund_dir, photos, "estimated.jpg", "05.jpg")
    write_sidecars([geoloc_result(photos / "estimated.jpg")])
    long = "IMG_20240501_100000123_HDR_from_takeout.jpg"
    gpsless(lund_dir, photos, long, "07.jpg")
    cut = "IMG_20240501_100000123_HDR_from_takeout.jpg.su.json"  # 46 characters and ".json"
    (photos / cut).write_text(takeout_json(-33.4489, -70.6693, title=long), encoding="utf-8")
    shutil.copy2(lund_dir / "09.jpg", photos / "09.jpg")
    (photos / "09.jpg.xmp").write_text(digikam_xmp(), encoding="utf-8")  # EXIF wins

    report = _index(photos, tmp_path / "db", tiny_model)
    assert (report["indexed"], report["located"], report["unlocated"]) == (5, 4, 1)
    listed = _photos(tmp_path / "db")
    assert {n: p["gps_source"] for n, p in listed.items()} == {
        "digikam.jpg": "xmp", "lightroom.jpg": "xmp", "estimated.jpg": None, long: "takeout", "09.jpg": "exif"}
    assert (listed["digikam.jpg"]["lat"], listed["digikam.jpg"]["alt"]) == pytest.approx((PARIS[0], 130.0), abs=1e-6)
    assert listed[long]["lat"] == pytest.approx(-33.4489)
    assert listed["09.jpg"]["lat"] == pytest.approx(55.698539, abs=1e-5)  # its own EXIF
    assert "written by geoloc" in listed["estimated.jpg"]["reason"]
    text = CliRunner().invoke(app, ["photos", "--db", str(tmp_path / "db")]).stdout
    assert "(from its XMP sidecar)" in text and "(from its Google Takeout JSON)" in text
    csv_head = CliRunner().invoke(app, ["photos", "--db", str(tmp_path / "db"), "--csv"]).stdout.splitlines()[0]
    assert csv_head.endswith(",gps_source")


def test_a_sidecar_added_later_is_picked_up_without_the_network(tmp_path, lund_dir, tiny_model, monkeypatch):
    photos = tmp_path / "photos"
    gpsless(lund_dir, photos)
    gpsless(lund_dir, photos, "other.jpg", "03.jpg")
    db = tmp_path / "db"
    assert _index(photos, db, tiny_model)["unlocated"] == 2
    row_before = _photos(db)["photo.jpg"]

    def no_network(*args, **kwargs):
        raise AssertionError("the model was loaded although no photo's pixels changed")

    monkeypatch.setattr("geoloc.indexing.run.load_database_model", no_network)
    sidecar = photos / "photo.jpg.xmp"
    sidecar.write_text(digikam_xmp(), encoding="utf-8")
    report = _index(photos, db, tiny_model)
    assert (report["indexed"], report["unchanged"], report["positions_updated"]) == (0, 2, 1)
    assert (report["located"], report["unlocated"]) == (1, 1)
    row = _photos(db)["photo.jpg"]
    assert (row["lat"], row["lon"], row["gps_source"]) == (pytest.approx(PARIS[0], abs=1e-6),
                                                           pytest.approx(PARIS[1], abs=1e-6), "xmp")
    assert row["sha256"] == row_before["sha256"]

    assert _index(photos, db, tiny_model)["positions_updated"] == 0  # nothing changed since

    sidecar.write_text(digikam_xmp("33,26.934S", "70,40.158W"), encoding="utf-8")  # edited in place
    st = sidecar.stat()
    os.utime(sidecar, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert _index(photos, db, tiny_model)["positions_updated"] == 1
    assert _photos(db)["photo.jpg"]["lat"] == pytest.approx(-33.4489, abs=1e-6)

    sidecar.unlink()  # the sidecar goes: so does the position it gave
    report = _index(photos, db, tiny_model)
    assert (report["positions_updated"], report["located"]) == (1, 0)
    assert _photos(db)["photo.jpg"]["gps_source"] is None


def test_the_unlocated_reason_says_a_sidecar_has_a_position_now(tmp_path, lund_dir, tiny_model, monkeypatch):
    photos = tmp_path / "photos"
    gpsless(lund_dir, photos)
    _index(photos, tmp_path / "db", tiny_model)
    (photos / "photo.xmp").write_text(lightroom_xmp(), encoding="utf-8")
    reason = _photos(tmp_path / "db", "--unlocated")["photo.jpg"]["reason"]
    assert "XMP sidecar has a position now" in reason and "geoloc index" in reason


def test_an_older_database_without_the_new_columns(tmp_path, lund_dir, tiny_model):
    """Readers of a database an older geoloc wrote see EXIF as the source of its positions; its
    first writer adds the columns (once), keeping every row."""
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy2(lund_dir / "01.jpg", photos / "01.jpg")
    gpsless(lund_dir, photos, "02.jpg", "02.jpg")
    db = tmp_path / "db"
    _index(photos, db, tiny_model)
    conn = sqlite3.connect(db / "photos.sqlite")
    conn.execute("ALTER TABLE photos DROP COLUMN gps_source")
    conn.execute("ALTER TABLE photos DROP COLUMN sidecar_key")
    conn.commit()
    conn.close()

    listed = _photos(db)
    assert (listed["01.jpg"]["gps_source"], listed["02.jpg"]["gps_source"]) == ("exif", None)
    locate = CliRunner().invoke(app, ["locate", str(photos / "02.jpg"), "--db", str(db), "--json"])
    assert locate.exit_code == 0, locate.output

    (photos / "02.jpg.xmp").write_text(digikam_xmp(), encoding="utf-8")
    report = _index(photos, db, tiny_model)
    assert (report["indexed"], report["positions_updated"]) == (0, 1)
    conn = sqlite3.connect(db / "photos.sqlite")
    columns = {row[1] for row in conn.execute("PRAGMA table_info(photos)")}
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    conn.close()
    assert {"gps_source", "sidecar_key"} <= columns and version == 2
    assert _photos(db)["02.jpg"]["gps_source"] == "xmp"
    check = CliRunner().invoke(app, ["check", "--db", str(db)])
    assert check.exit_code == 0, check.output
