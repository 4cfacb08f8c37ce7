"""geoloc.photos: discovery, EXIF GPS/time/orientation, decoding — on real and odd files."""

from __future__ import annotations

import csv
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational as R

from geoloc.errors import GeolocError, PhotoError
from geoloc.photos import SUFFIXES, PhotoMeta, discover, load_image, read_meta
from geoloc.photos import decode as decode_module
from geoloc.photos import discovery as discovery_module
from geoloc.photos.discovery import BROKEN_LINK
from geoloc.photos.tags import capture_time, gps_position

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# --- helpers ----------------------------------------------------------------------------------


def make_jpeg(
    path: Path,
    gps: dict | None = None,
    exif_ifd: dict | None = None,
    ifd0: dict | None = None,
    size=(32, 24),
    color=(90, 120, 200),
) -> Path:
    """A small real JPEG whose EXIF holds exactly the tags given (written by Pillow)."""
    exif = Image.Exif()
    for tag, value in (ifd0 or {}).items():
        exif[tag] = value
    if gps is not None:
        exif[0x8825] = gps
    if exif_ifd:
        exif[0x8769] = exif_ifd
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, exif=exif)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims a size but carries no pixels: a decompression bomb built for free."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    return path


def collect():
    errors: list[PhotoError] = []
    return errors, errors.append


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- discovery --------------------------------------------------------------------------------


def test_suffixes_cover_the_issue_formats():
    assert SUFFIXES == {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".heic", ".heif", ".bmp",
                        ".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2"}


def test_discover_formats_any_case_sorted_hidden_skipped(tmp_path):
    names = [
        "b.JPG",
        "a.jpeg",
        "c.Png",
        "d.TIF",
        "e.tiff",
        "f.webp",
        "g.HEIC",
        "h.heif",
        "sub/z.jpg",
        "sub/deeper/y.JpEg",
        "aa/x.jpg",
    ]
    for name in names:
        touch(tmp_path / name)
    for skipped in [
        "notes.txt",
        "movie.mp4",
        ".hidden.jpg",
        ".cache/x.jpg",
        "sub/.thumbs/t.jpg",
        "noext",
    ]:
        touch(tmp_path / skipped)
    errors, on_error = collect()
    found = [p.relative_to(tmp_path).as_posix() for p in discover([tmp_path], on_error)]
    assert found == [
        "a.jpeg",
        "aa/x.jpg",
        "b.JPG",
        "c.Png",
        "d.TIF",
        "e.tiff",
        "f.webp",
        "g.HEIC",
        "h.heif",
        "sub/deeper/y.JpEg",
        "sub/z.jpg",
    ]
    assert errors == []
    # Stable: the same order on every run.
    assert [p.relative_to(tmp_path).as_posix() for p in discover([tmp_path], on_error)] == found


def test_discover_missing_path_raises_before_yielding(tmp_path):
    touch(tmp_path / "a.jpg")
    with pytest.raises(GeolocError) as info:
        discover([tmp_path, tmp_path / "nope"])  # raises at call time, not at the first next()
    assert str(info.value) == f"{tmp_path / 'nope'}: no such file or folder"
    assert not isinstance(info.value, PhotoError)


def test_discover_explicit_files(tmp_path):
    photo = touch(tmp_path / ".hidden" / ".secret.jpg")
    text = touch(tmp_path / "readme.txt")
    errors, on_error = collect()
    assert list(discover([photo, text], on_error)) == [photo]  # named explicitly: hidden is fine
    assert len(errors) == 1 and errors[0].path == text
    assert "not a photo" in errors[0].reason


def test_discover_yields_each_photo_once(tmp_path):
    a = touch(tmp_path / "photos" / "a.jpg")
    touch(tmp_path / "photos" / "b.jpg")
    (tmp_path / "alias.jpg").symlink_to(a)
    (tmp_path / "photos_link").symlink_to(tmp_path / "photos", target_is_directory=True)
    found = list(discover([tmp_path / "photos", a, tmp_path, tmp_path / "photos"]))
    resolved = [p.resolve() for p in found]
    assert len(resolved) == len(set(resolved)) == 2


@pytest.mark.timeout(60)
def test_discover_follows_symlinked_folders_and_survives_loops(tmp_path):
    outside = tmp_path / "outside"
    touch(outside / "far.jpg")
    root = tmp_path / "root"
    touch(root / "sub" / "near.jpg")
    (root / "sub" / "up").symlink_to(root, target_is_directory=True)  # loop to an ancestor
    (root / "self").symlink_to(root / "self")  # a link to itself
    (root / "ext").symlink_to(outside, target_is_directory=True)
    (root / "sub" / "again").symlink_to(outside, target_is_directory=True)  # the same folder twice
    found = sorted(p.name for p in discover([root], on_error=lambda e: None))
    assert found == ["far.jpg", "near.jpg"]


def test_discover_reports_broken_links_and_skips_fifos(tmp_path):
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")  # reading it would block forever
    touch(tmp_path / "ok.jpg")
    errors, on_error = collect()
    assert [p.name for p in discover([tmp_path], on_error)] == ["ok.jpg"]
    assert [(e.path.name, e.reason) for e in errors] == [("gone.jpg", BROKEN_LINK)]


def test_a_broken_link_named_explicitly_is_one_error_not_the_end_of_the_run(tmp_path):
    """A shell expanding ``*.jpg`` names a link whose target went like any other file: it is a
    problem with that file, not a typo in a PATH, so the others are still found."""
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    ok = touch(tmp_path / "ok.jpg")
    errors, on_error = collect()
    assert list(discover([tmp_path / "gone.jpg", ok], on_error)) == [ok]
    assert [(e.path.name, e.reason) for e in errors] == [("gone.jpg", BROKEN_LINK)]
    # locate's form: a missing query is answered for too, and the others still run
    errors, on_error = collect()
    assert list(discover([tmp_path / "nope.jpg", ok], on_error, missing_ok=True)) == [ok]
    assert [(e.path.name, e.reason) for e in errors] == [("nope.jpg", "no such file or folder")]


def test_discover_unreadable_folder_goes_on(tmp_path, monkeypatch):
    touch(tmp_path / "a" / "1.jpg")
    touch(tmp_path / "locked" / "2.jpg")
    touch(tmp_path / "z" / "3.jpg")
    real_scandir = os.scandir

    def scandir(path):  # root ignores chmod 000, so deny the way the kernel would
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(discovery_module.os, "scandir", scandir)
    errors, on_error = collect()
    assert [p.name for p in discover([tmp_path], on_error)] == ["1.jpg", "3.jpg"]
    assert [(e.path, e.reason) for e in errors] == [(tmp_path / "locked", "permission denied")]


@pytest.mark.skipif(IS_ROOT, reason="root reads folders whatever their mode")
def test_discover_unreadable_folder_for_real(tmp_path):
    touch(tmp_path / "locked" / "2.jpg")
    touch(tmp_path / "ok.jpg")
    (tmp_path / "locked").chmod(0)
    try:
        errors, on_error = collect()
        assert [p.name for p in discover([tmp_path], on_error)] == ["ok.jpg"]
        assert [e.reason for e in errors] == ["permission denied"]
    finally:
        (tmp_path / "locked").chmod(0o755)


def test_discover_warns_without_a_handler(tmp_path, capsys):
    touch(tmp_path / "notes.txt")
    assert list(discover([tmp_path / "notes.txt"])) == []
    err = capsys.readouterr().err
    assert "warning:" in err and "notes.txt" in err and "not a photo" in err


def test_odd_names_are_found_read_and_decoded(tmp_path):
    names = ["my holiday photo.jpg", 'it\'s "quoted".jpg', "café 東京 — ünïcödé.jpg", "-dash.jpg"]
    for name in names:
        make_jpeg(
            tmp_path / name, gps={1: "N", 2: (R(10), R(0), R(0)), 3: "E", 4: (R(20), R(0), R(0))}
        )
    latin1 = os.fsencode(tmp_path) + b"/caf\xe9 latin-1.jpg"  # not valid UTF-8 on disk
    with open(latin1, "wb") as fh:
        fh.write((tmp_path / names[0]).read_bytes())
    found = list(discover([tmp_path]))
    assert len(found) == 5
    for path in found:
        assert load_image(path, 16).size == (16, 12)
        meta = read_meta(path)
        assert (meta.lat, meta.lon) == (10.0, 20.0)


# --- decoding: what must fail, and how ----------------------------------------------------------


@pytest.fixture(scope="module")
def lund_bytes(lund_dir) -> bytes:
    return (lund_dir / "01.jpg").read_bytes()


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.jpg", b"", "empty file"),
        ("text.jpg", b"hello, I am a shopping list\nmilk\n", "not an image (a text file)"),
        (
            "page.jpg",
            b"<!DOCTYPE html><html><body>404</body></html>",
            "not an image (an HTML page)",
        ),
        ("noise.png", bytes(range(256)) * 8, "not an image"),
        ("doc.tiff", b"%PDF-1.4 something", "not an image (a PDF document)"),
    ],
)
def test_unusable_files_give_one_clear_photo_error(tmp_path, name, content, reason):
    path = touch(tmp_path / name, content)
    with pytest.raises(PhotoError) as info:
        load_image(path, 224)
    assert info.value.path == path
    assert info.value.reason.startswith(reason)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
    meta = read_meta(path)  # metadata never fails on content
    assert not meta.located and meta.width is None


def test_truncated_jpeg(tmp_path, lund_bytes):
    for cut in (len(lund_bytes) // 2, 2000):
        path = touch(tmp_path / f"cut{cut}.jpg", lund_bytes[:cut])
        with pytest.raises(PhotoError, match="truncated image"):
            load_image(path, 224)
    # The EXIF sits at the start, so the position survives a cut-off end.
    assert read_meta(tmp_path / f"cut{len(lund_bytes) // 2}.jpg").located


def test_corrupt_jpeg_data(tmp_path, lund_bytes):
    data = bytearray(lund_bytes)
    data[len(data) // 3 : len(data) // 3 + 4000] = b"\xff" * 4000
    path = touch(tmp_path / "garbled.jpg", bytes(data))
    try:
        image = load_image(path, 224)  # libjpeg may recover; then the image must still be sane
        assert image.mode == "RGB" and max(image.size) == 224
    except PhotoError as exc:
        assert exc.path == path


def test_decompression_bomb_is_refused_without_decoding(tmp_path):
    path = png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(PhotoError) as info:
        load_image(path, 640)
    assert info.value.reason.startswith(
        "image too large: 100000×100000 pixels (decompression bomb limit 250000000 pixels"
    )
    meta = read_meta(path)  # the header alone is harmless
    assert (meta.width, meta.height) == (100_000, 100_000)


def test_bomb_limit_is_configurable(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.new("RGB", (50, 40)).save(path)
    with pytest.raises(PhotoError, match=r"50×40 pixels \(decompression bomb limit 1000 pixels"):
        load_image(path, max_pixels=1000)
    monkeypatch.setenv("GEOLOC_MAX_PIXELS", "1999")
    with pytest.raises(PhotoError, match="limit 1999 pixels"):
        load_image(path)
    monkeypatch.setenv("GEOLOC_MAX_PIXELS", "2000")
    assert load_image(path).size == (50, 40)


def test_pillow_bomb_warning_does_not_leak_and_its_limit_is_restored(tmp_path, monkeypatch):
    path = tmp_path / "p.png"
    Image.new("RGB", (50, 40)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow would warn (and refuse at 2000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(path).size == (50, 40)
        assert read_meta(path).width == 50
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_huge_panorama_decodes_within_the_limit(tmp_path):
    path = tmp_path / "pano.jpg"
    row = Image.fromarray(np.linspace(0, 255, 20000).astype(np.uint8)[None, :]).convert("RGB")
    row.resize((20000, 3000), Image.Resampling.NEAREST).save(path, quality=70)
    image = load_image(path, 640)
    assert image.size == (640, 96) and image.mode == "RGB"
    row = np.asarray(image)[48, :, 0].astype(int)
    assert row[0] < 10 and row[-1] > 245 and np.all(np.diff(row) >= -2)  # the whole width, in order


def test_unreadable_file(tmp_path, monkeypatch, lund_dir):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(decode_module, "open", denied, raising=False)
    with pytest.raises(PhotoError) as info:
        load_image(lund_dir / "01.jpg", 64)
    assert info.value.reason == "permission denied"
    monkeypatch.undo()
    from geoloc.photos import meta as meta_module

    monkeypatch.setattr(meta_module, "open", denied, raising=False)
    with pytest.raises(PhotoError, match="permission denied"):
        read_meta(lund_dir / "01.jpg")


@pytest.mark.skipif(IS_ROOT, reason="root reads files whatever their mode")
def test_unreadable_file_for_real(tmp_path, lund_bytes):
    path = touch(tmp_path / "private.jpg", lund_bytes)
    path.chmod(0)
    with pytest.raises(PhotoError, match="permission denied"):
        load_image(path)
    with pytest.raises(PhotoError, match="permission denied"):
        read_meta(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(PhotoError, match="no such file"):
        load_image(tmp_path / "gone.jpg")
    with pytest.raises(PhotoError, match="no such file"):
        read_meta(tmp_path / "gone.jpg")
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(PhotoError, match="is a folder"):
        load_image(tmp_path / "dir.jpg")


# --- decoding: what must work -----------------------------------------------------------------


def test_sizes_never_upscale_and_keep_aspect(lund_dir):
    path = lund_dir / "01.jpg"
    assert load_image(path).size == (1024, 768)
    assert load_image(path, 2000).size == (1024, 768)
    assert load_image(path, 640).size == (640, 480)
    assert load_image(path, 224).size == (224, 168)


def test_draft_decoding_matches_full_decoding(lund_dir):
    path = lund_dir / "02.jpg"
    fast = np.asarray(load_image(path, 240, draft=True), dtype=np.float32)
    full = np.asarray(load_image(path, 240, draft=False), dtype=np.float32)
    assert fast.shape == full.shape == (180, 240, 3)
    assert np.abs(fast - full).mean() < 4.0  # DCT scaling vs. bicubic: the same picture


@pytest.mark.parametrize(
    "size, max_side",
    [((1001, 333), 100), ((333, 1001), 250), ((2050, 1538), 640), ((999, 997), 123)],
)
def test_output_size_does_not_depend_on_draft(tmp_path, size, max_side):
    path = tmp_path / "odd.jpg"
    Image.new("RGB", size, (200, 100, 50)).save(path)
    fast, full = load_image(path, max_side), load_image(path, max_side, draft=False)
    assert fast.size == full.size and max(fast.size) == max_side
    w, h = size
    assert abs(fast.size[0] / fast.size[1] - w / h) < 2 / min(fast.size)


@pytest.mark.parametrize(
    "mode, make, expected",
    [
        ("I;16", lambda: Image.fromarray(np.full((24, 32), 40000, np.uint16)), (155, 155, 155)),
        ("CMYK", lambda: Image.new("CMYK", (32, 24), (0, 255, 0, 0)), (255, 0, 255)),
        ("RGBA", lambda: Image.new("RGBA", (32, 24), (255, 0, 0, 0)), (255, 255, 255)),
        ("LA", lambda: Image.new("LA", (32, 24), (0, 255)), (0, 0, 0)),
        ("P", lambda: Image.new("P", (32, 24), 0), (0, 0, 0)),
        ("1", lambda: Image.new("1", (32, 24), 1), (255, 255, 255)),
        ("F", lambda: Image.new("F", (32, 24), 0.5), (127, 127, 127)),
    ],
)
def test_every_mode_becomes_rgb(tmp_path, mode, make, expected):
    image = make()
    assert image.mode == mode
    suffix = {"CMYK": ".jpg", "F": ".tiff", "1": ".tif"}.get(mode, ".png")
    path = tmp_path / f"img{suffix}"
    image.save(path)
    out = load_image(path, 16)
    assert out.mode == "RGB" and out.size == (16, 12)
    assert all(abs(a - b) <= 2 for a, b in zip(out.getpixel((8, 6)), expected, strict=True))


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    grey = np.asarray(load_image(tmp_path / "ramp.png"))[4, :, 0].astype(int)
    assert grey[0] == 0 and grey[-1] == 255 and 120 <= grey[32] <= 135
    assert np.all(np.diff(grey) >= 0)


def test_webp_and_heif(tmp_path, exif_dir):
    Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "x.webp")
    assert load_image(tmp_path / "x.webp", 20).size == (20, 15)
    heif = load_image(exif_dir / "heic" / "samplefilehub.heif", 224)
    assert heif.mode == "RGB" and heif.size == (224, 149)


def dihedral(a: np.ndarray) -> list[np.ndarray]:
    out = []
    for k in range(4):
        r = np.rot90(a, k)
        out += [r, np.fliplr(r)]
    return out


@pytest.mark.parametrize("kind", ["landscape", "portrait"])
def test_all_eight_orientations_end_up_upright(exif_dir, kind):
    folder = exif_dir / "jpg" / "orientation"
    upright = np.asarray(load_image(folder / f"{kind}_1.jpg", 96), dtype=np.float32)
    for n in range(1, 9):
        assert read_meta(folder / f"{kind}_{n}.jpg").orientation == n
        image = np.asarray(load_image(folder / f"{kind}_{n}.jpg", 96), dtype=np.float32)
        assert image.shape == upright.shape, n
        distances = [
            np.abs(c - upright).mean() if c.shape == upright.shape else np.inf
            for c in dihedral(image)
        ]
        assert int(np.argmin(distances)) == 0, (n, distances)  # no further turn or flip is better


def test_orientation_applied_after_resize(tmp_path):
    image = Image.new("RGB", (200, 100), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))  # red mark top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: turn 90° clockwise to display
    image.save(tmp_path / "o6.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "o6.jpg", 50)
    assert out.size == (25, 50)
    r, g, b = out.getpixel((22, 2))  # the mark is now top-right
    assert r > 200 and b < 60
    meta = read_meta(tmp_path / "o6.jpg")
    assert (meta.orientation, meta.width, meta.height) == (6, 200, 100)


@pytest.mark.parametrize("bad", [0, 9, 65535])
def test_broken_orientation_is_ignored(tmp_path, bad):
    make_jpeg(tmp_path / "o.jpg", ifd0={0x0112: bad}, size=(40, 20))
    assert load_image(tmp_path / "o.jpg").size == (40, 20)
    assert read_meta(tmp_path / "o.jpg").orientation == 1


# --- EXIF: GPS, written into real files and read back -------------------------------------------

DMS_LAT = (R(43), R(28), R(2814, 1000))  # 43.467448…
DMS_LON = (R(11), R(53), R(6456, 1000))  # 11.885126…
LAT = 43 + 28 / 60 + 2.814 / 3600
LON = 11 + 53 / 60 + 6.456 / 3600

GPS_CASES = {
    "dms N/E": ({1: "N", 2: DMS_LAT, 3: "E", 4: DMS_LON}, (LAT, LON)),
    "S/W lower case": ({1: "s", 2: DMS_LAT, 3: "w", 4: DMS_LON}, (-LAT, -LON)),
    "decimal minutes": (
        {1: "N", 2: (R(43), R(280469, 10000)), 3: "W", 4: (R(3), R(435, 10))},
        (43 + 28.0469 / 60, -(3 + 43.5 / 60)),
    ),
    "decimal minutes, 0/0 seconds": (
        {1: "N", 2: (R(43), R(471, 10), R(0, 0)), 3: "E", 4: (R(11), R(14, 1), R(0, 0))},
        (43.785, 11 + 14 / 60),
    ),
    "decimal degrees": (
        {1: "S", 2: (R(33865, 1000),), 3: "E", 4: (R(151209, 1000),)},
        (-33.865, 151.209),
    ),
    "no refs": ({2: DMS_LAT, 4: DMS_LON}, (LAT, LON)),
    "empty refs": ({1: "", 2: DMS_LAT, 3: "", 4: DMS_LON}, (LAT, LON)),
    "zero denominator degrees": ({1: "N", 2: (R(43, 0), R(28), R(0)), 3: "E", 4: DMS_LON}, None),
    "x/0 seconds": ({1: "N", 2: DMS_LAT, 3: "E", 4: (R(11), R(53), R(7, 0))}, None),
    "0/0 everywhere": ({1: "N", 2: (R(0, 0),) * 3, 3: "E", 4: (R(0, 0),) * 3}, None),
    "latitude without longitude": ({1: "N", 2: DMS_LAT}, None),
    "longitude without latitude": ({3: "E", 4: DMS_LON}, None),
    "version only": ({0: b"\x02\x02\x00\x00"}, None),
    "empty block": ({}, None),
    "latitude 91": ({1: "N", 2: (R(91), R(0), R(0)), 3: "E", 4: DMS_LON}, None),
    "longitude 181": ({1: "N", 2: DMS_LAT, 3: "W", 4: (R(181), R(0), R(0))}, None),
    "minutes 75": ({1: "N", 2: (R(43), R(75), R(0)), 3: "E", 4: DMS_LON}, None),
    "null island": ({1: "N", 2: (R(0), R(0), R(0)), 3: "E", 4: (R(0), R(0), R(0))}, None),
    "wrong ref letter": ({1: "E", 2: DMS_LAT, 3: "E", 4: DMS_LON}, None),
}


@pytest.mark.parametrize("case", list(GPS_CASES))
def test_gps_variants_written_by_a_real_encoder(tmp_path, case):
    gps, expected = GPS_CASES[case]
    meta = read_meta(make_jpeg(tmp_path / "g.jpg", gps=gps))
    if expected is None:
        assert (meta.lat, meta.lon, meta.located) == (None, None, False)
        assert meta.no_position_reason
    else:
        assert meta.located and meta.no_position_reason is None
        assert meta.lat == pytest.approx(expected[0], abs=1e-9)
        assert meta.lon == pytest.approx(expected[1], abs=1e-9)


def test_empty_gps_block_reason(tmp_path):
    assert read_meta(make_jpeg(tmp_path / "e.jpg", gps={})).no_position_reason == "empty GPS block"
    meta = read_meta(make_jpeg(tmp_path / "n.jpg", gps=GPS_CASES["null island"][0]))
    assert "(0, 0)" in meta.no_position_reason


def test_altitude_and_accuracy(tmp_path):
    base = {1: "N", 2: DMS_LAT, 3: "E", 4: DMS_LON}
    below = read_meta(make_jpeg(tmp_path / "a.jpg", gps={**base, 5: b"\x01", 6: R(4215, 10)}))
    assert below.alt == pytest.approx(-421.5) and below.gps_accuracy_m is None
    above = read_meta(
        make_jpeg(tmp_path / "b.jpg", gps={**base, 5: b"\x00", 6: R(3370), 31: R(47, 10), 11: R(3)})
    )
    assert above.alt == 3370 and above.gps_accuracy_m == pytest.approx(
        4.7
    )  # HPositioningError wins
    dop = read_meta(make_jpeg(tmp_path / "c.jpg", gps={**base, 11: R(2)}))
    assert dop.gps_accuracy_m == pytest.approx(10.0) and dop.alt is None  # DOP × 5 m
    silly = read_meta(make_jpeg(tmp_path / "d.jpg", gps={**base, 6: R(9_999_999), 11: R(0)}))
    assert silly.alt is None and silly.gps_accuracy_m is None
    # Without a position, its altitude and accuracy mean nothing either.
    lone = read_meta(make_jpeg(tmp_path / "e.jpg", gps={1: "N", 2: DMS_LAT, 6: R(100), 31: R(5)}))
    assert (lone.alt, lone.gps_accuracy_m) == (None, None)


def test_gps_values_as_exifread_gives_them():
    from exifread.utils import Ratio

    gps = {
        1: b"S\x00",
        2: [Ratio(0, 1), Ratio(11139, 500), Ratio(0, 0)],
        3: ["E"],
        4: [Ratio(36, 1), Ratio(677, 200), Ratio(0, 1)],
    }
    lat, lon, reason = gps_position(gps)
    assert reason is None
    assert lat == pytest.approx(-0.3713) and lon == pytest.approx(36.0564167, abs=1e-7)
    assert gps_position({2: "43 28 2.814", 4: "11.5"})[:2] == (pytest.approx(LAT), 11.5)
    assert gps_position({1: "N", 2: [Ratio(-5, 1)], 4: [Ratio(10, 1)]})[0] == 5.0  # ref wins
    assert gps_position({2: [Ratio(-5, 1)], 4: [Ratio(-10, 1)]})[:2] == (-5.0, -10.0)
    assert gps_position({2: [Ratio(5, 0)], 4: [Ratio(10, 1)]})[0] is None
    assert gps_position({2: [1, 2, 3, 4], 4: [1]})[0] is None
    assert gps_position({2: [1, 2, 3, 0, 0], 4: [1]})[0] == pytest.approx(1 + 2 / 60 + 3 / 3600)
    assert gps_position({2: [float("nan")], 4: [1]})[0] is None
    assert gps_position({2: [], 4: []})[2] == "GPS block without coordinates"


# --- EXIF: capture time -----------------------------------------------------------------------


def test_capture_time_prefers_original_with_subseconds_and_offset(tmp_path):
    exif_ifd = {
        0x9003: "2021:04:11 15:47:53",
        0x9011: "-05:00",
        0x9291: "054",
        0x9004: "2021:04:12 00:00:00",
    }
    meta = read_meta(
        make_jpeg(tmp_path / "t.jpg", ifd0={0x0132: "2024:01:01 00:00:00"}, exif_ifd=exif_ifd)
    )
    assert meta.taken_at == "2021-04-11T15:47:53.054-05:00"
    from datetime import datetime

    assert datetime.fromisoformat(meta.taken_at).utcoffset().total_seconds() == -5 * 3600


def test_capture_time_fallbacks():
    assert (
        capture_time({0x0132: "2008:07:31 10:38:11"}, {0x9010: "+02:00"})
        == "2008-07-31T10:38:11+02:00"
    )
    assert (
        capture_time({0x0132: "2008:07:31 10:38:11"}, {0x9004: "2008:05:30 15:56:01"})
        == "2008-05-30T15:56:01"
    )
    assert capture_time({}, {0x9003: "0000:00:00 00:00:00", 0x9004: "    :  :     :  :  "}) is None
    assert capture_time({}, {0x9003: "2013:02:30 10:00:00"}) is None  # no such day
    assert capture_time({}, {0x9003: "2015-04-10T20:12:23Z"}) == "2015-04-10T20:12:23+00:00"
    assert (
        capture_time({}, {0x9003: b"2015:04:10 20:12:23\x00", 0x9011: "garbage"})
        == "2015-04-10T20:12:23"
    )


# --- EXIF: the real lund walk -----------------------------------------------------------------


def lund_truth(lund_dir: Path) -> list[dict]:
    with open(lund_dir.parent / "gps_from_exif.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_lund_gps_matches_the_reference(lund_dir):
    rows = lund_truth(lund_dir)
    assert len(rows) == 29
    for row in rows:
        meta = read_meta(lund_dir / row["filename"])
        assert isinstance(meta, PhotoMeta) and meta.located
        assert meta.lat == pytest.approx(float(row["lat"]), abs=1e-6)
        assert meta.lon == pytest.approx(float(row["lon"]), abs=1e-6)
        assert meta.alt == pytest.approx(float(row["alt_m"]), abs=1e-6)
        assert (meta.width, meta.height) == (int(row["width"]), int(row["height"]))


def test_read_meta_never_decodes_pixels(tmp_path, monkeypatch, exif_dir):
    exif = Image.Exif()
    exif[0x0112] = 6
    paths = []
    for suffix in (".jpg", ".png", ".tiff", ".webp"):
        paths.append(tmp_path / f"o{suffix}")
        Image.new("RGB", (40, 20)).save(paths[-1], exif=exif)
    paths.append(exif_dir / "heic" / "samplefilehub.heif")
    from PIL import ImageFile

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("read_meta decoded pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    for path in paths:
        meta = read_meta(path)
        assert meta.width is not None, path
        assert meta.orientation == (1 if path.suffix == ".heif" else 6), path


def test_pillow_fallback_when_exifread_fails(lund_dir, monkeypatch):
    import exifread

    def broken(*args, **kwargs):
        raise RuntimeError("exifread gave up")

    monkeypatch.setattr(exifread, "process_file", broken)
    row = lund_truth(lund_dir)[0]
    meta = read_meta(lund_dir / row["filename"])
    assert meta.lat == pytest.approx(float(row["lat"]), abs=1e-6)
    assert meta.lon == pytest.approx(float(row["lon"]), abs=1e-6)


def test_exifread_chatter_stays_off_stderr(tmp_path, capfd):
    read_meta(touch(tmp_path / "plain.txt", b"not an image at all"))
    read_meta(touch(tmp_path / "png.png", b""))
    assert capfd.readouterr().err == ""


def test_a_bmp_is_a_photo_too(data_dir, tmp_path):
    """The ImageNet photo of the shared data is a BMP, as old Windows archives hold them."""
    cat = data_dir / "imagenet" / "cat.bmp"
    assert list(discover([cat])) == [cat]
    meta = read_meta(cat)
    assert not meta.located and meta.width and meta.height
    image = load_image(cat, 224)
    assert max(image.size) == 224 and image.mode == "RGB"


@pytest.mark.parametrize("name", ["01.jpg", "big"])
def test_indexing_reads_a_photo_once(lund_dir, tmp_path, monkeypatch, name):
    """One open and one stat give a photo's pixels, EXIF and hash, with the same answers as
    reading each from the file; past the in-memory size, each step reads the file as before."""
    import builtins
    import hashlib

    from geoloc.descriptors import extract
    from geoloc.models.preprocess import IMAGENET

    photo = lund_dir / "01.jpg"
    if name == "big":
        monkeypatch.setattr(extract, "READ_ONCE_BYTES", photo.stat().st_size - 1)
    opened, stats = [], []
    real_open, real_stat = builtins.open, os.stat

    def counting_open(file, *args, **kwargs):
        if str(file) == str(photo):
            opened.append(file)
        return real_open(file, *args, **kwargs)

    def counting_stat(file, *args, **kwargs):
        if str(file) == str(photo):
            stats.append(file)
        return real_stat(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(os, "stat", counting_stat)
    item = extract.decode_photo(photo, IMAGENET, 224)
    monkeypatch.undo()
    assert item.error is None
    assert item.sha256 == hashlib.sha256(photo.read_bytes()).hexdigest()
    meta = read_meta(photo)
    assert (item.meta.lat, item.meta.lon, item.meta.taken_at) == (meta.lat, meta.lon, meta.taken_at)
    assert np.array_equal(np.asarray(load_image(photo, 224)), np.asarray(
        load_image(photo, 224, data=photo.read_bytes())))
    assert (len(opened), len(stats)) == ((1, 0) if name == "01.jpg" else (4, 0))
