"""Decoding a photo into the upright RGB image a network sees.

Decoding is half the cost of indexing, so JPEGs are decoded with libjpeg's DCT scaling (Pillow's
draft mode) straight to the smallest scale that still covers the target size, then resized
once. Every way a file can be unusable (empty, not an image, cut short, a decompression bomb,
unreadable) ends as one :class:`PhotoError` with a reason a person can act on; nothing else
escapes, so a batch of thousands of photos survives its worst file.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from geoloc.errors import PhotoError
from geoloc.photos.raw import inspect_raw, is_raw_name, preview_bytes

DEFAULT_MAX_PIXELS = 250_000_000
"""Images with more pixels than this are refused as decompression bombs (``GEOLOC_MAX_PIXELS``)."""

MAX_PIXELS_ENV = "GEOLOC_MAX_PIXELS"

DECODE_MB_ENV = "GEOLOC_DECODE_MB"
"""Memory all decoding threads together may use for pixels at once, in MiB (default: a quarter
of the machine's memory, at most 1 GiB). One image that needs more is refused."""

_setup_lock = threading.Lock()
_setup_done = False
_open_lock = threading.Lock()

# EXIF orientation → the transposes that make the image upright, in order.
_TRANSPOSES: dict[int, tuple[Image.Transpose, ...]] = {
    1: (),
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}


def max_pixels_limit(max_pixels: int | None = None) -> int:
    """The bomb limit in force: the argument, else ``GEOLOC_MAX_PIXELS``, else 250 MP."""
    if max_pixels is not None:
        return int(max_pixels)
    env = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if env:
        try:
            value = int(float(env))
        except ValueError:
            value = 0
        if value > 0:
            return value
    return DEFAULT_MAX_PIXELS


def ensure_plugins() -> None:
    """Register the HEIC/HEIF opener once, on first use, so importing geoloc stays cheap.

    Pillow's own warnings about a file (corrupt EXIF: "Truncated File Read", two raw lines on
    stderr) are silenced here: what matters about a file reaches the user as one line of
    geoloc's, and a photo whose EXIF is damaged but whose pixels are fine is simply indexed.
    (A filter, not ``catch_warnings``, which is not safe across decoding threads.)
    """
    global _setup_done
    if _setup_done:
        return
    with _setup_lock:
        if _setup_done:
            return
        import warnings

        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
        except Exception:  # without pillow-heif, HEIC files are reported as unreadable
            pass
        _setup_done = True


def open_image(fh: BinaryIO, path: Path, max_pixels: int | None = None) -> Image.Image:
    """Parse the header only (no pixels) and refuse bombs before a byte is decoded.

    Pillow's own bomb check (a warning past 89 MP, an error past 179 MP) would both refuse
    legal panoramas and print warnings; geoloc applies its own configurable limit instead, so
    Pillow's is lifted for the duration of the header parse, under a lock so that concurrent
    decoders restore it correctly.
    """
    ensure_plugins()
    limit = max_pixels_limit(max_pixels)
    try:
        with _open_lock:
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                image = Image.open(fh)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except UnidentifiedImageError:
        raise PhotoError(path, f"not an image ({_sniff(fh)})") from None
    except PhotoError:
        raise
    except Exception as exc:
        raise PhotoError(path, _decode_reason(exc, "unreadable image header")) from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise PhotoError(path, f"not an image (size {width}×{height})")
    if width * height > limit:
        raise PhotoError(
            path,
            f"image too large: {width}×{height} pixels (decompression bomb limit {limit} pixels;"
            f" set {MAX_PIXELS_ENV} to raise it)",
        )
    return image


def exif_of(image: Image.Image) -> Image.Exif:
    """The image's EXIF without decoding its pixels.

    Pillow's PNG reader decodes the whole image to look for an eXIf chunk after the pixel data;
    the PNG specification puts eXIf before it, so only that one is read. This keeps metadata
    reads cheap and a decompression bomb harmless.
    """
    if image.format == "PNG" and "exif" not in image.info:
        return Image.Exif()
    return image.getexif()


def orientation_of(image: Image.Image) -> int:
    """The EXIF orientation Pillow sees (1 when absent or broken).

    HEIC/HEIF: libheif already rotates the pixels by the container's own transform and
    pillow-heif resets the EXIF tag to 1, so this is 1 there and the image is not turned twice.
    """
    try:
        value = exif_of(image).get(0x0112)
    except Exception:
        return 1
    try:
        value = int(value)
    except (TypeError, ValueError):
        return 1
    return value if value in _TRANSPOSES else 1


def load_image(
    path: str | os.PathLike,
    max_side: int | None = None,
    *,
    max_pixels: int | None = None,
    draft: bool = True,
    data: bytes | None = None,
) -> Image.Image:
    """Decode ``path`` into an upright RGB image whose longest side is at most ``max_side``.

    Images are never upscaled. ``draft=False`` decodes JPEGs at full size first (slower, for
    comparisons). ``data``: the file's bytes, already read (indexing reads a photo once for its
    pixels, its EXIF and its hash). Raises :class:`PhotoError` — and nothing else — when the
    file is unusable.
    """
    path = Path(path)
    if max_side is not None:
        max_side = int(max_side)
        if max_side < 1:
            raise ValueError("max_side must be at least 1")
    try:
        fh = io.BytesIO(data) if data is not None else open(path, "rb")
    except OSError as exc:
        raise PhotoError(path, open_error_reason(exc)) from None
    try:
        with fh:
            return _load(fh, path, max_side, max_pixels, draft)
    except PhotoError:
        raise
    except MemoryError:
        raise PhotoError(path, "out of memory while decoding") from None
    except Exception as exc:
        raise PhotoError(path, _decode_reason(exc, "cannot decode image")) from None


def _load(
    fh: BinaryIO, path: Path, max_side: int | None, max_pixels: int | None, draft: bool
) -> Image.Image:
    if fh.seek(0, os.SEEK_END) == 0:
        raise PhotoError(path, "empty file")
    fh.seek(0)
    orientation = None
    if is_raw_name(path):
        fh, orientation = _raw_preview(fh, path)
    image = open_image(fh, path, max_pixels)
    if orientation is None:
        orientation = orientation_of(image)
    # From the stored size, so that the result is the same with or without draft decoding.
    target = _scaled(image.size, max_side) if max_side is not None else image.size
    if draft and target != image.size:
        # JPEG: DCT scaling by 1/2, 1/4 or 1/8, never below `target`. HEIF: an embedded
        # thumbnail that is an exact scaled copy and not smaller than `target`, if any.
        image.draft("RGB", target)
    with decode_budget().reserve(path, image):
        image.load()
        image = to_rgb(image)
    if image.size != target:
        # Bicubic, as MATLAB's imresize with which the original NetVLAD models were trained.
        image = image.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)
    for method in _TRANSPOSES[orientation]:
        image = image.transpose(method)
    return image


def _raw_preview(fh: BinaryIO, path: Path) -> tuple[BinaryIO, int | None]:
    """A RAW file's embedded JPEG preview, and the orientation to apply to it: the RAW's own
    (previews are stored as the sensor saw them), or None for one whose JPEG says (RAF).

    A file named like a RAW that is no RAW container (a JPEG renamed .dng) is decoded as what
    it is.
    """
    import io

    raw = inspect_raw(fh)
    if raw.kind is None:
        fh.seek(0)
        return fh, None
    if raw.preview is None:
        raise PhotoError(path, raw.problem or "no embedded JPEG preview")
    return io.BytesIO(preview_bytes(fh, raw.preview)), raw.orientation


# Bytes per pixel of Pillow's modes as decoded; the flattening to 8-bit RGB comes on top.
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "LA": 2, "La": 2, "PA": 2, "RGB": 3, "YCbCr": 3, "LAB": 3,
                    "HSV": 3, "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4, "I": 4, "F": 4}


def decode_bytes(image: Image.Image) -> int:
    """The peak memory decoding ``image`` at its (draft) size takes: the decoded pixels, the
    8-bit RGB copy, and for transparency the two full-size layers of the flattening."""
    width, height = image.size
    mode = image.mode
    per_pixel = _BYTES_PER_PIXEL.get(mode, 2 if mode.startswith("I;16") else 4)
    if mode != "RGB":
        per_pixel += 3
    if "A" in mode or "a" in mode or (mode == "P" and "transparency" in image.info):
        per_pixel += 8
    return width * height * per_pixel


class DecodeBudget:
    """Bytes of pixels in memory at once, shared by every decoding thread of the process.

    The pixel limit alone lets a 970 KB PNG of 15800×15800 RGBA through (249.6 MP) to take
    5.4 GB; what matters is bytes. An image that needs more than the whole budget is refused
    with the numbers; images that fit wait for each other, so two big ones never decode at once
    and many small ones (draft-decoded JPEGs: a few MB) never wait.
    """

    def __init__(self, limit: int):
        self.limit = int(limit)
        self.used = 0
        self._cond = threading.Condition()

    def reserve(self, path: Path, image: Image.Image):
        need = decode_bytes(image)
        if need > self.limit:
            width, height = image.size
            raise PhotoError(
                path,
                f"image too large to decode in memory: {width}×{height} {image.mode} needs about "
                f"{_mb(need)} (limit {_mb(self.limit)}; set {DECODE_MB_ENV} to raise it)",
            )
        return _Reservation(self, need)


class _Reservation:
    def __init__(self, budget: DecodeBudget, need: int):
        self.budget = budget
        self.need = need

    def __enter__(self):
        with self.budget._cond:
            self.budget._cond.wait_for(lambda: self.budget.used + self.need <= self.budget.limit)
            self.budget.used += self.need

    def __exit__(self, *exc):
        with self.budget._cond:
            self.budget.used -= self.need
            self.budget._cond.notify_all()


def _mb(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


_budget: DecodeBudget | None = None
_budget_lock = threading.Lock()


def decode_budget() -> DecodeBudget:
    """The process's budget: ``GEOLOC_DECODE_MB``, else a quarter of memory, at most 1 GiB."""
    global _budget
    with _budget_lock:
        limit = _budget_limit()
        if _budget is None or _budget.limit != limit:
            _budget = DecodeBudget(limit)
        return _budget


def _budget_limit() -> int:
    env = os.environ.get(DECODE_MB_ENV, "").strip()
    if env:
        try:
            value = float(env)
            if value > 0:
                return int(value * 2**20)
        except ValueError:
            pass
    return min(1 << 30, max(256 << 20, memory_bytes() // 4))


def memory_bytes(available: bool = False) -> int:
    """The machine's physical memory (or what is available now), 8 GiB when it cannot be read."""
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES" if available else "SC_PHYS_PAGES")
        return int(pages) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return 8 << 30


def _scaled(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The size with the longest side brought down to ``max_side`` (never up), aspect kept."""
    width, height = size
    longest = max(width, height)
    if longest <= max_side:
        return size
    scale = max_side / longest
    if width >= height:
        return max_side, max(1, round(height * scale))
    return max(1, round(width * scale)), max_side


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from whatever the file holds.

    16-bit and float greyscale are scaled, not clipped (Pillow's plain ``convert`` would turn
    most of a 16-bit image white); transparency is flattened onto white, as viewers show it.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _wide_grey_to_rgb(image)
    if mode == "P":
        has_alpha = (
            "transparency" in image.info
            or image.palette is not None
            and image.palette.mode == "RGBA"
        )
        image = image.convert("RGBA" if has_alpha else "RGB")
        mode = image.mode
        if mode == "RGB":
            return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _wide_grey_to_rgb(image: Image.Image) -> Image.Image:
    import numpy as np

    array = np.asarray(image)
    if image.mode.startswith("I;16"):
        grey = (array.astype(np.uint32) >> 8).astype(np.uint8)
    else:
        data = array.astype(np.float64)
        finite = data[np.isfinite(data)]
        peak = float(finite.max()) if finite.size else 0.0
        if image.mode == "F" and peak <= 1.0:
            data = data * 255.0
        elif peak > 255.0:
            data = data / 257.0
        grey = np.clip(np.nan_to_num(data), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def open_error_reason(exc: OSError) -> str:
    """Why a file could not be opened, in words (shared with :func:`geoloc.photos.read_meta`)."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a folder, not a photo"
    return f"cannot open ({exc.strerror or exc})"


def _decode_reason(exc: BaseException, prefix: str) -> str:
    text = " ".join(str(exc).split())
    lower = text.lower()
    if "truncated" in lower or isinstance(exc, EOFError):
        return "truncated image (the file ends before the image data does)"
    if "broken data stream" in lower:
        return "corrupt image data (broken data stream)"
    if isinstance(exc, SyntaxError):
        return f"corrupt image ({text or type(exc).__name__})"
    if isinstance(exc, MemoryError):
        return "out of memory while decoding"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"cannot read file ({exc.strerror or text})"
    return (
        f"{prefix} ({type(exc).__name__}: {text})" if text else f"{prefix} ({type(exc).__name__})"
    )


def _sniff(fh: BinaryIO) -> str:
    """A hint at what a non-image is, for the warning line."""
    try:
        fh.seek(0)
        head = fh.read(512)
    except Exception:
        return "unrecognised format"
    if not head:
        return "empty file"
    if head.lstrip().startswith((b"<!doctype html", b"<!DOCTYPE html", b"<html", b"<HTML")):
        return "an HTML page"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive"
    if head.startswith(b"\xff\xd8"):
        return "a damaged JPEG"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the end of the sample
            return "unrecognised format"
        text = head[: exc.start].decode("utf-8")
    if all(ch.isprintable() or ch in "\r\n\t" for ch in text):
        return "a text file"
    return "unrecognised format"
