"""Whether two files hold the same pixels, in bounded memory: what proves that a metadata write
(``--write-exif``, its undo) left a photo's image untouched, however large the photo."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from geoloc.errors import GeolocError


class PixelError(GeolocError):
    """The pixels could not be compared (past the pixel limit, unreadable)."""


def same_pixels(a: Path, b: Path) -> bool:
    """The two files decode to the same pixels (mode, size and every byte), in bounded memory.

    A metadata writer leaves a JPEG's image data as it was, byte for byte: when the segments
    that define the pixels are equal (:func:`_jpeg_image_digest`) so are the pixels, and that
    costs reading the files, not decoding two images of up to 250 MP (3 GB for a 144 MP
    photo). Otherwise each file is decoded in turn, under geoloc's one pixel limit, and its
    pixels hashed a strip at a time: one image in memory at once, never two plus copies.
    """
    first = _jpeg_image_digest(a)
    if first is not None and first == _jpeg_image_digest(b):
        return True
    return _pixel_digest(a) == _pixel_digest(b)


#: Segments before the first scan that say nothing about the pixels: APP1–APP13 (EXIF, XMP,
#: ICC, MPF, IPTC…), APP15 and comments. APP0 (JFIF) and APP14 (Adobe) stay in the digest: their
#: presence and transform flag choose the colour conversion.
_METADATA_MARKERS = frozenset(range(0xE1, 0xEE)) | {0xEF, 0xFE}


def _jpeg_image_digest(path: Path) -> str | None:
    """A hash of what a JPEG decoder turns into pixels: the segments before the first scan
    except metadata, then everything from the first scan on (the scans, the tables between
    progressive scans, whatever follows). None when the file is not a JPEG this can read."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        if fh.read(2) != b"\xff\xd8":
            return None
        while True:
            head = fh.read(2)
            if len(head) < 2 or head[0] != 0xFF:
                return None
            marker = head[1]
            while marker == 0xFF:  # fill bytes before a marker
                more = fh.read(1)
                if not more:
                    return None
                marker = more[0]
            if marker == 0xDA:
                digest.update(b"\xff\xda")
                while block := fh.read(1 << 22):
                    digest.update(block)
                return digest.hexdigest()
            if marker == 0xD9:
                return None  # an image without a scan
            if marker == 0x01 or 0xD0 <= marker <= 0xD7:
                digest.update(bytes((0xFF, marker)))  # markers without a length
                continue
            size = fh.read(2)
            length = int.from_bytes(size, "big")
            if len(size) < 2 or length < 2:
                return None
            if marker in _METADATA_MARKERS:
                fh.seek(length - 2, os.SEEK_CUR)
                continue
            body = fh.read(length - 2)
            if len(body) < length - 2:
                return None
            digest.update(bytes((0xFF, marker)) + size + body)


#: Rows hashed at a time: a strip of at most this many bytes is copied out of the image.
_STRIP_BYTES = 16 << 20


def _pixel_digest(path: Path) -> tuple[str, tuple[int, int], str]:
    """(mode, size, sha256 of the decoded pixels); refuses, as :class:`PixelError`, what geoloc
    would not decode anywhere else (past the pixel limit, unreadable)."""
    from geoloc.errors import PhotoError
    from geoloc.photos.decode import open_image

    try:
        with open(path, "rb") as fh, open_image(fh, path) as image:
            image.load()
            width, height = image.size
            rows = max(1, _STRIP_BYTES // max(1, len(image.mode) * width))  # about; mode letters ≈ bytes
            digest = hashlib.sha256()
            for top in range(0, height, rows):
                digest.update(image.crop((0, top, width, min(height, top + rows))).tobytes())
            return image.mode, image.size, digest.hexdigest()
    except PhotoError as exc:
        raise PixelError(f"cannot compare the pixels: {exc.reason}") from None
    except (OSError, ValueError, MemoryError) as exc:
        raise PixelError(f"cannot compare the pixels: {exc}") from None
