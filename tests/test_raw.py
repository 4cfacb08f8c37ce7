"""RAW camera files: found by `geoloc index`, positioned by their own GPS, decoded from their
embedded JPEG preview with the RAW's orientation.

The files are built at run time from a real Lund photo in the layouts cameras write
(tests/rawfiles.py), and exiftool, an independent reader, confirms each one first: its file
type, its preview bytes, its GPS. Formats built here: DNG, CR2, NEF, ARW, ORF, CR3, RAF. RW2
goes through the same TIFF code (another magic number, Panasonic's JpgFromRaw tag) and was
checked by hand on exiftool's own sample.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import rawfiles
from geoloc.cli import app
from geoloc.errors import PhotoError
from geoloc.photos import SUFFIXES, discover, load_image, read_meta
from geoloc.photos.raw import inspect_raw

EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool not installed")

PARIS = (48.8867, 2.3431)
SANTIAGO = (-33.4489, -70.6693)
LUND_01 = (55.698167, 13.195389)  # its EXIF, as gps_from_exif.csv gives it


@pytest.fixture(scope="module")
def lund_preview(lund_dir) -> tuple[bytes, Image.Image]:
    """A 320 px JPEG of a real Lund photo, as a camera would embed it, and a small thumbnail."""
    image = Image.open(lund_dir / "01.jpg")
    image.thumbnail((320, 320))
    thumb = image.copy()
    thumb.thumbnail((64, 64))
    return rawfiles.jpeg_bytes(image), thumb


def _exiftool(path: Path, *tags: str) -> dict:
    out = subprocess.run([EXIFTOOL, "-j", "-n", "-validate", "-warning", *tags, str(path)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)[0]


def _extract(path: Path, tag: str) -> bytes:
    return subprocess.run([EXIFTOOL, "-b", f"-{tag}", str(path)], capture_output=True, check=True).stdout


_TURN = {1: (), 3: (Image.Transpose.ROTATE_180,), 6: (Image.Transpose.ROTATE_270,),
         8: (Image.Transpose.ROTATE_90,)}


def _expected(preview: bytes, tmp_path: Path, orientation: int, max_side: int) -> np.ndarray:
    """The preview decoded as a plain JPEG would be, then turned as its orientation says."""
    plain = tmp_path / "plain.jpg"
    plain.write_bytes(preview)
    image = load_image(plain, max_side)
    for turn in _TURN[orientation]:
        image = image.transpose(turn)
    return np.asarray(image)


def _build(kind: str, preview: bytes, thumb: Image.Image, orientation: int, position) -> bytes:
    gps = rawfiles.gps_tags(*position) if position else None
    if kind == "dng":
        return rawfiles.dng(preview, thumb, orientation, gps)
    if kind == "nef":
        return rawfiles.nef(preview, thumb, orientation, gps)
    if kind == "cr2":
        return rawfiles.cr2(preview, rawfiles.jpeg_bytes(thumb), orientation, gps)
    if kind == "cr3":
        return rawfiles.cr3(preview, rawfiles.jpeg_bytes(thumb), orientation, gps)
    if kind == "arw":
        return rawfiles.arw(preview, rawfiles.jpeg_bytes(thumb), orientation, gps)
    if kind == "orf":
        return rawfiles.orf(preview, orientation, gps)
    raise ValueError(kind)


CASES = [  # (suffix, what exiftool calls the preview, orientation, position)
    ("dng", "PreviewImage", 6, PARIS),
    ("nef", "JpgFromRaw", 3, PARIS),  # big-endian, as Nikon writes it
    ("cr2", "PreviewImage", 6, SANTIAGO),
    ("cr3", "PreviewImage", 8, SANTIAGO),
    ("arw", "PreviewImage", 6, PARIS),
    ("orf", "ThumbnailImage", 3, SANTIAGO),  # Olympus's header magic, the JPEG in IFD1
]


def test_raw_suffixes_are_photos(tmp_path):
    for name in ("a.DNG", "b.cr2", "c.CR3", "d.nef", "e.ARW", "f.raf", "g.ORF", "h.rw2"):
        (tmp_path / name).write_bytes(b"x")
    assert {".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf"} <= SUFFIXES
    assert len(list(discover([tmp_path]))) == 8


@needs_exiftool
@pytest.mark.parametrize("suffix, preview_tag, orientation, position", CASES)
def test_raw_position_orientation_and_pixels(tmp_path, lund_preview, suffix, preview_tag, orientation, position):
    preview, thumb = lund_preview
    path = tmp_path / f"IMG_0001.{suffix.upper()}"
    path.write_bytes(_build(suffix, preview, thumb, orientation, position))
    # exiftool agrees on what the file is: its type, no validation problem, the same preview.
    tags = _exiftool(path, "-FileType", "-GPSLatitude", "-GPSLongitude", "-Orientation")
    assert tags["FileType"] == suffix.upper()
    assert tags["Validate"] == "0 0 0", tags
    assert (tags["GPSLatitude"], tags["GPSLongitude"]) == pytest.approx(position, abs=1e-6)
    assert tags["Orientation"] == orientation
    assert _extract(path, preview_tag) == preview

    meta = read_meta(path)
    assert (meta.lat, meta.lon) == pytest.approx(position, abs=1e-6)
    assert meta.gps_source == "exif"
    assert meta.orientation == orientation and (meta.width, meta.height) == (320, 240)
    image = load_image(path, 160)
    assert image.size == ((120, 160) if orientation in (6, 8) else (160, 120))
    assert np.array_equal(np.asarray(image), _expected(preview, tmp_path, orientation, 160))


@needs_exiftool
def test_raf_takes_its_jpeg_and_that_jpegs_exif(tmp_path, lund_dir):
    """A RAF's embedded JPEG is a camera JPEG with its own EXIF: its GPS, time, orientation."""
    image = Image.open(lund_dir / "01.jpg")
    exif = image.info["exif"]
    image.thumbnail((320, 320))
    jpeg = rawfiles.jpeg_bytes(image, exif=exif)
    path = tmp_path / "DSCF0001.RAF"
    path.write_bytes(rawfiles.raf(jpeg))
    tags = _exiftool(path, "-FileType", "-GPSLatitude")
    assert tags["FileType"] == "RAF" and tags["Validate"] == "0 0 0"
    assert _extract(path, "PreviewImage") == jpeg
    meta = read_meta(path)
    assert (meta.lat, meta.lon) == pytest.approx(LUND_01, abs=1e-5)
    assert meta.alt == pytest.approx(tags.get("GPSAltitude", meta.alt))
    assert load_image(path, 160).size == (160, 120)


def test_cr2_passes_over_its_lossless_raw_data(lund_preview):
    """The raw data of a CR2 is a JPEG too (lossless, SOF3) and far larger than the preview:
    it must not be taken for the picture."""
    preview, thumb = lund_preview
    raw = inspect_raw(io.BytesIO(_build("cr2", preview, thumb, 1, None)))
    assert (raw.kind, raw.preview.width, raw.preview.height) == ("tiff", 320, 240)
    assert raw.preview.length == len(preview)


def test_a_raw_without_a_preview_is_one_line(tmp_path, lund_preview):
    """A DNG whose only pictures are its thumbnail and the sensor data (many phones write
    these) has no preview geoloc can use: one reason, no position invented, no traceback."""
    _, thumb = lund_preview
    data = rawfiles.build_tiff([rawfiles.Ifd(
        {0x0100: (rawfiles.LONG, [64]), 0x0101: (rawfiles.LONG, [48]), 0x0103: (rawfiles.SHORT, [1]),
         0x0106: (rawfiles.SHORT, [2]), 0xC612: (rawfiles.BYTE, [1, 4, 0, 0])},
        strip=rawfiles.rgb_bytes(thumb))])
    path = tmp_path / "phone.dng"
    path.write_bytes(data)
    with pytest.raises(PhotoError, match="no embedded JPEG preview"):
        load_image(path, 160)
    assert read_meta(path).lat is None


@pytest.mark.parametrize("damage", ["cut", "garbage", "loop"])
def test_damaged_raw_files_are_reported_not_raised(tmp_path, lund_preview, damage):
    preview, thumb = lund_preview
    data = bytearray(_build("dng", preview, thumb, 1, PARIS))
    if damage == "cut":
        data = data[: len(data) // 3]
    elif damage == "garbage":
        data[8:4096] = b"\xff" * (4096 - 8)
    else:  # IFD0 points back at itself
        data[4:8] = (8).to_bytes(4, "little")
        data[8:10] = (1).to_bytes(2, "little")
        data[10:22] = bytes(12)
        data[22:26] = (8).to_bytes(4, "little")
    path = tmp_path / "bad.dng"
    path.write_bytes(bytes(data))
    try:
        load_image(path, 160)
    except PhotoError as exc:
        assert "\n" not in str(exc)
    read_meta(path)  # never raises for bad metadata


def test_a_jpeg_named_dng_is_decoded_as_the_jpeg_it_is(tmp_path, lund_dir):
    path = tmp_path / "renamed.dng"
    shutil.copy2(lund_dir / "01.jpg", path)
    assert load_image(path, 160).size == (160, 120)
    assert read_meta(path).lat == pytest.approx(LUND_01[0], abs=1e-5)


@needs_exiftool
def test_index_raw_files(tmp_path, lund_preview, tiny_model):
    """`geoloc index` finds RAW files, takes their positions and their pixels."""
    preview, thumb = lund_preview
    photos = tmp_path / "photos"
    photos.mkdir()
    for suffix, _, orientation, position in CASES:
        (photos / f"shot.{suffix}").write_bytes(_build(suffix, preview, thumb, orientation, position))
    result = CliRunner().invoke(app, ["index", str(photos), "--db", str(tmp_path / "db"), "--model",
                                      tiny_model, "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["indexed"], report["located"], report["errors"]) == (len(CASES), len(CASES), 0)
    listed = json.loads(CliRunner().invoke(app, ["photos", "--db", str(tmp_path / "db"), "--json"]).stdout)
    by_name = {Path(p["path"]).name: p for p in listed}
    assert (by_name["shot.dng"]["width"], by_name["shot.dng"]["height"]) == (240, 320)  # upright
    assert (by_name["shot.nef"]["width"], by_name["shot.nef"]["height"]) == (320, 240)
    assert by_name["shot.cr3"]["lat"] == pytest.approx(SANTIAGO[0], abs=1e-6)
    assert {p["gps_source"] for p in listed} == {"exif"}
