"""geoloc.photos against EXIF as 101 real devices and editors wrote it (exif-samples).

The truth is ``exif_scan.jsonl``: per file, what ExifRead 3.5.1 (``er_lat``/``er_lon``) and Pillow
13 with pillow-heif (``pil_*``, ``orientation``) read. The issue asks geoloc's position to equal the
ExifRead column — the reader it names for GPS — to 1e-6, or both to have none; the two columns
agree on every file, which the first test checks so a future scan that splits them is noticed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geoloc.errors import PhotoError
from geoloc.photos import discover, load_image, read_meta

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "exif-samples"


def scan_rows() -> list[dict]:
    path = SAMPLES / "exif_scan.jsonl"
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


ROWS = scan_rows()
pytestmark = pytest.mark.skipif(not ROWS, reason=f"exif samples not found at {SAMPLES}")


def test_the_scan_lists_every_photo_and_its_columns_agree(exif_dir):
    assert len(ROWS) == 101
    found = {p.relative_to(exif_dir).as_posix() for p in discover([exif_dir])}
    assert found == {row["file"] for row in ROWS}
    for row in ROWS:
        if row.get("er_lat") is not None and row.get("pil_lat") is not None:
            assert row["er_lat"] == pytest.approx(row["pil_lat"], abs=1e-6)
            assert row["er_lon"] == pytest.approx(row["pil_lon"], abs=1e-6)


@pytest.mark.parametrize("row", ROWS, ids=[row["file"] for row in ROWS])
def test_position_orientation_and_size_match_the_scan(exif_dir, row):
    meta = read_meta(exif_dir / row["file"])
    if row.get("er_lat") is None:
        assert (meta.lat, meta.lon) == (None, None) and not meta.located
        assert meta.no_position_reason
    else:
        assert meta.located
        assert meta.lat == pytest.approx(row["er_lat"], abs=1e-6)
        assert meta.lon == pytest.approx(row["er_lon"], abs=1e-6)
        if row.get("pil_alt") is not None:
            assert meta.alt == pytest.approx(row["pil_alt"], abs=1e-6)
    # Pillow's view of the geometry is what load_image works from.
    assert meta.orientation == (row.get("orientation") or 1)
    assert [meta.width, meta.height] == row["pil_size"]


def test_eighteen_photos_carry_a_usable_position(exif_dir):
    located = sorted(row["file"] for row in ROWS if read_meta(exif_dir / row["file"]).located)
    assert len(located) == 18
    assert "jpg/Kodak_CX7530.jpg" in located and "heic/IMG_5195.HEIC" in located
    assert sum(row.get("er_lat") is not None for row in ROWS) == 18


@pytest.mark.parametrize(
    "file, lat, lon, alt, accuracy",
    [
        ("jpg/Kodak_CX7530.jpg", -0.3713, 36.0564167, None, None),  # southern hemisphere
        ("jpg/tests/87_OSError.jpg", 43.7855944, 11.2346194, 42.123, None),  # decimal minutes
        ("jpg/tests/67-0_length_string.jpg", 51.025, 7.5919444, 340.0, None),  # GPSDOP 0: unknown
        ("heic/IMG_5195.HEIC", 39.0513444, -94.2887722, 244927 / 940, 250111 / 6444),
    ],
)
def test_known_positions(exif_dir, file, lat, lon, alt, accuracy):
    meta = read_meta(exif_dir / file)
    assert meta.lat == pytest.approx(lat, abs=1e-6) and meta.lon == pytest.approx(lon, abs=1e-6)
    assert meta.alt == (None if alt is None else pytest.approx(alt))
    assert meta.gps_accuracy_m == (None if accuracy is None else pytest.approx(accuracy))


@pytest.mark.parametrize(
    "file, reason",
    [
        ("jpg/Canon_40D.jpg", "GPS block without coordinates"),  # only GPSVersionID
        ("jpg/hdr/canon_hdr_NO.jpg", "GPS block without coordinates"),
        ("jpg/tests/45-gps_ifd.jpg", "empty GPS block"),  # a GPS pointer to an empty IFD
        ("jpg/tests/30-type_error.jpg", "no GPS data"),  # wrongly typed EXIF pointer
        ("jpg/invalid/image01551.jpg", "no EXIF data"),
    ],
)
def test_unlocated_samples_say_why(exif_dir, file, reason):
    assert read_meta(exif_dir / file).no_position_reason == reason


@pytest.mark.parametrize(
    "file, taken_at",
    [
        ("heic/IMG_5195.HEIC", "2021-04-11T15:47:53.054-05:00"),
        ("jpg/mobile/HMD_Nokia_8.3_5G.jpg", "2022-08-14T14:12:31+03:00"),
        ("jpg/Canon_40D.jpg", "2008-05-30T15:56:01.00"),  # DateTimeOriginal, not the edit time
        ("heic/mobile/HMD_Nokia_8.3_5G.heif", "2022-02-03T14:44:07.722"),  # DateTime + SubSecTime
        ("jpg/WWL_(Polaroid)_ION230.jpg", "2026-11-24T14:41:16"),  # a clock set to the future
        ("jpg/orientation/landscape_1.jpg", None),
    ],
)
def test_capture_times(exif_dir, file, taken_at):
    assert read_meta(exif_dir / file).taken_at == taken_at


def test_heic_rotation_is_not_applied_twice(exif_dir):
    # ExifRead sees "Rotated 90 CW" in this iPhone HEIC, but libheif already turns the pixels.
    path = exif_dir / "heic" / "mobile" / "iphone_13_pro_max.HEIC"
    meta = read_meta(path)
    assert (meta.orientation, meta.width, meta.height) == (1, 3024, 4032)


def every_file(*roots: Path) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob("*") if p.is_file())


@pytest.mark.slow
def test_nothing_but_photo_errors_over_every_sample_file(exif_dir, lund_dir):
    files = every_file(exif_dir, lund_dir.parent)
    assert len(files) > 130  # photos plus READMEs, licences, CSV and JSON: all must be survivable
    decoded = failed = 0
    for path in files:
        read_meta(path)  # raises nothing at all for a readable file
        try:
            image = load_image(path, 96)
        except PhotoError as exc:
            assert exc.path == path and "\n" not in str(exc)
            failed += 1
            continue
        assert image.mode == "RGB" and max(image.size) <= 96
        decoded += 1
    # Every photo decodes (even the "invalid" and "corrupted" ones); only non-images fail.
    assert decoded == 101 + 29
    assert failed == len(files) - decoded
