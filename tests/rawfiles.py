"""Small RAW files for tests, built from real photos, in the layouts cameras write.

No RAW file with a real preview can be shipped with the tests (and the real photos are never
copied into the repository), so tests build their own at run time: the preview is a real Lund
photo, and every layout follows the format's published structure (TIFF 6 / DNG 1.4 IFDs and
SubIFDs; Canon's CR2 header; CR3's ISO boxes with CMT1/CMT2/CMT4 and PRVW; Fujifilm's RAF
header). Tests then ask exiftool, an independent reader, to confirm each file is what it claims
(its file type, its preview, its GPS) before geoloc reads it.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field

from PIL import Image

BYTE, ASCII, SHORT, LONG, RATIONAL, UNDEFINED = 1, 2, 3, 4, 5, 7
_FORMATS = {BYTE: "B", SHORT: "H", LONG: "I"}


@dataclass
class Ifd:
    """One IFD: ``tags`` maps a tag to ``(type, values)``; ``strip`` becomes the IFD's one
    strip, ``jpeg`` its JPEGInterchangeFormat, ``subifds`` its SubIFDs, ``children`` the IFDs
    other tags point to (0x8769 EXIF, 0x8825 GPS)."""

    tags: dict[int, tuple[int, object]] = field(default_factory=dict)
    strip: bytes | None = None
    jpeg: bytes | None = None
    subifds: list["Ifd"] = field(default_factory=list)
    children: dict[int, "Ifd"] = field(default_factory=dict)


def jpeg_bytes(image: Image.Image, quality: int = 90, exif: bytes | None = None) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality, **({"exif": exif} if exif else {}))
    return out.getvalue()


def rgb_bytes(image: Image.Image) -> bytes:
    return image.convert("RGB").tobytes()


def build_tiff(chain: list[Ifd], order: str = "<", magic: bytes = b"*\x00", extra: bytes = b"") -> bytes:
    """A TIFF structure holding the IFD ``chain`` (IFD0, IFD1, …) and everything they point to.

    ``magic`` replaces 42 (Olympus writes ``RO``, Panasonic ``U\\0``); ``extra`` follows the
    8-byte header (CR2's ``CR`` signature and raw IFD offset)."""
    if order == ">" and magic == b"*\x00":
        magic = b"\x00*"
    buf = bytearray((b"II" if order == "<" else b"MM") + magic + b"\0\0\0\0" + extra)

    def align() -> None:
        if len(buf) % 2:
            buf.append(0)

    def put(data: bytes) -> int:
        align()
        at = len(buf)
        buf.extend(data)
        return at

    def value_bytes(typ: int, values) -> tuple[bytes, int]:
        if typ == ASCII:
            data = values.encode("latin-1") + b"\0"
            return data, len(data)
        if typ == UNDEFINED or (typ == BYTE and isinstance(values, (bytes, bytearray))):
            return bytes(values), len(values)
        if typ == RATIONAL:
            flat = [x for pair in values for x in pair]
            return struct.pack(f"{order}{len(flat)}I", *flat), len(values)
        data = struct.pack(f"{order}{len(values)}{_FORMATS[typ]}", *values)
        return data, len(values)

    def write(ifd: Ifd, next_offset: int) -> int:
        tags = dict(ifd.tags)
        if ifd.subifds:
            offsets = []
            for sub in ifd.subifds:
                offsets.append(write(sub, 0))
            tags[0x014A] = (LONG, offsets)
        for tag, child in ifd.children.items():
            tags[tag] = (LONG, [write(child, 0)])
        if ifd.strip is not None:
            tags[0x0111] = (LONG, [put(ifd.strip)])
            tags[0x0117] = (LONG, [len(ifd.strip)])
        if ifd.jpeg is not None:
            tags[0x0201] = (LONG, [put(ifd.jpeg)])
            tags[0x0202] = (LONG, [len(ifd.jpeg)])
        fields = []
        for tag in sorted(tags):
            typ, values = tags[tag]
            data, count = value_bytes(typ, values)
            if len(data) <= 4:
                field_bytes = data.ljust(4, b"\0")
            else:
                field_bytes = struct.pack(order + "I", put(data))
            fields.append(struct.pack(f"{order}HHI", tag, typ, count) + field_bytes)
        at = put(struct.pack(order + "H", len(fields)) + b"".join(fields) + struct.pack(order + "I", next_offset))
        return at

    next_offset = 0
    for ifd in reversed(chain):
        next_offset = write(ifd, next_offset)
    buf[4:8] = struct.pack(order + "I", next_offset)
    return bytes(buf)


def gps_tags(lat: float, lon: float, alt: float | None = None) -> dict[int, tuple[int, object]]:
    """A GPS IFD's tags for a position, as cameras write it (D/M/S rationals and references)."""
    def dms(value: float) -> list[tuple[int, int]]:
        value = abs(value)
        degrees = int(value)
        minutes = int((value - degrees) * 60)
        seconds = round(((value - degrees) * 60 - minutes) * 60 * 10000)
        return [(degrees, 1), (minutes, 1), (seconds, 10000)]

    tags: dict[int, tuple[int, object]] = {
        0: (BYTE, [2, 3, 0, 0]),
        1: (ASCII, "N" if lat >= 0 else "S"), 2: (RATIONAL, dms(lat)),
        3: (ASCII, "E" if lon >= 0 else "W"), 4: (RATIONAL, dms(lon)),
    }
    if alt is not None:
        tags[5] = (BYTE, [0 if alt >= 0 else 1])
        tags[6] = (RATIONAL, [(round(abs(alt) * 100), 100)])
    return tags


def dng(preview: bytes, thumbnail: Image.Image, orientation: int = 1,
        gps: dict | None = None) -> bytes:
    """A DNG as Adobe's converter lays it out: IFD0 a small RGB thumbnail, one SubIFD the raw
    CFA data (16-bit, uncompressed), another the JPEG preview in one strip."""
    w, h = thumbnail.size
    raw = Ifd({0x00FE: (LONG, [0]), 0x0100: (LONG, [8]), 0x0101: (LONG, [8]), 0x0102: (SHORT, [16]),
               0x0103: (SHORT, [1]), 0x0106: (SHORT, [32803]), 0x0115: (SHORT, [1]),
               0x0116: (LONG, [8]), 0x828D: (SHORT, [2, 2]), 0x828E: (BYTE, [0, 1, 1, 2])},
              strip=bytes(8 * 8 * 2))
    width, height = Image.open(io.BytesIO(preview)).size
    jpeg = Ifd({0x00FE: (LONG, [1]), 0x0100: (LONG, [width]), 0x0101: (LONG, [height]),
                0x0102: (SHORT, [8, 8, 8]), 0x0103: (SHORT, [7]), 0x0106: (SHORT, [6]),
                0x0115: (SHORT, [3]), 0x0116: (LONG, [height])}, strip=preview)
    tags = {0x00FE: (LONG, [1]), 0x0100: (LONG, [w]), 0x0101: (LONG, [h]), 0x0102: (SHORT, [8, 8, 8]),
            0x0103: (SHORT, [1]), 0x0106: (SHORT, [2]), 0x010F: (ASCII, "geoloc"),
            0x0110: (ASCII, "test DNG"), 0x0112: (SHORT, [orientation]), 0x0115: (SHORT, [3]),
            0x0116: (LONG, [h]), 0xC612: (BYTE, [1, 4, 0, 0]), 0xC614: (ASCII, "geoloc test DNG")}
    ifd0 = Ifd(tags, strip=rgb_bytes(thumbnail), subifds=[raw, jpeg],
               children={0x8825: Ifd(gps)} if gps else {})
    return build_tiff([ifd0])


def nef(preview: bytes, thumbnail: Image.Image, orientation: int = 1, gps: dict | None = None,
        order: str = ">") -> bytes:
    """A NEF as Nikon's bodies lay it out: IFD0 a small RGB thumbnail, SubIFD0 the full-size
    JPEG (JpgFromRaw, as JPEGInterchangeFormat), SubIFD1 the raw CFA data."""
    w, h = thumbnail.size
    width, height = Image.open(io.BytesIO(preview)).size
    jpg_from_raw = Ifd({0x00FE: (LONG, [1]), 0x0103: (SHORT, [6]), 0x011A: (RATIONAL, [(300, 1)]),
                        0x011B: (RATIONAL, [(300, 1)]), 0x0128: (SHORT, [2])}, jpeg=preview)
    raw = Ifd({0x00FE: (LONG, [0]), 0x0100: (LONG, [8]), 0x0101: (LONG, [8]), 0x0102: (SHORT, [16]),
               0x0103: (SHORT, [1]), 0x0106: (SHORT, [32803]), 0x0115: (SHORT, [1]),
               0x0116: (LONG, [8]), 0x828D: (SHORT, [2, 2]), 0x828E: (BYTE, [0, 1, 1, 2])},
              strip=bytes(8 * 8 * 2))
    tags = {0x00FE: (LONG, [1]), 0x0100: (LONG, [w]), 0x0101: (LONG, [h]), 0x0102: (SHORT, [8, 8, 8]),
            0x0103: (SHORT, [1]), 0x0106: (SHORT, [2]), 0x010F: (ASCII, "NIKON CORPORATION"),
            0x0110: (ASCII, "NIKON Z 6"), 0x0112: (SHORT, [orientation]), 0x0115: (SHORT, [3]),
            0x0116: (LONG, [h])}
    ifd0 = Ifd(tags, strip=rgb_bytes(thumbnail), subifds=[jpg_from_raw, raw],
               children={0x8825: Ifd(gps)} if gps else {})
    assert width and height
    return build_tiff([ifd0], order=order)  # Nikon writes big-endian files


#: The start of a lossless JPEG (SOF3), as the raw data of a CR2 or a DNG begins: a JPEG that
#: is no picture, which a reader of previews must pass over.
LOSSLESS_JPEG = (b"\xff\xd8\xff\xc4\x00\x14\x00" + bytes(17) + b"\xff\xc3\x00\x0e\x0c\x0f\xc0\x17\x70\x04"
                 + b"\x01\x11\x00\x02\x11\x00" + bytes(64) + b"\xff\xd9")


def cr2(preview: bytes, thumbnail: bytes, orientation: int = 1, gps: dict | None = None) -> bytes:
    """A CR2 as Canon's bodies lay it out: the ``CR`` signature after the TIFF header, IFD0
    the full-size JPEG (old-style JPEG strip) with the camera's tags, IFD1 a JPEG thumbnail,
    IFD3 the raw data as lossless JPEG (much bigger than the preview, and no picture)."""
    ifd0 = Ifd({0x0103: (SHORT, [6]), 0x010F: (ASCII, "Canon"), 0x0110: (ASCII, "Canon EOS 5D Mark IV"),
                0x0112: (SHORT, [orientation])}, strip=preview,
               children={0x8825: Ifd(gps)} if gps else {})
    ifd1 = Ifd({0x0103: (SHORT, [6])}, jpeg=thumbnail)
    ifd2 = Ifd({0x0100: (LONG, [4]), 0x0101: (LONG, [4]), 0x0102: (SHORT, [8, 8, 8]),
                0x0103: (SHORT, [1]), 0x0106: (SHORT, [2]), 0x0115: (SHORT, [3])}, strip=bytes(48))
    ifd3 = Ifd({0x0103: (SHORT, [6])}, strip=LOSSLESS_JPEG + bytes(1 << 16))
    return build_tiff([ifd0, ifd1, ifd2, ifd3], extra=b"CR\x02\x00\x00\x00\x00\x00")


def arw(preview: bytes, thumbnail: bytes, orientation: int = 1, gps: dict | None = None) -> bytes:
    """An ARW as Sony's bodies lay it out: IFD0 holds the preview (JPEGInterchangeFormat) and
    the camera's tags, IFD1 the thumbnail (the raw data's SubIFD is left out)."""
    ifd0 = Ifd({0x0103: (SHORT, [6]), 0x010F: (ASCII, "SONY"), 0x0110: (ASCII, "ILCE-7M3"),
                0x0112: (SHORT, [orientation])}, jpeg=preview,
               children={0x8825: Ifd(gps)} if gps else {})
    return build_tiff([ifd0, Ifd({0x0103: (SHORT, [6])}, jpeg=thumbnail)])


def orf(preview: bytes, orientation: int = 1, gps: dict | None = None) -> bytes:
    """An ORF: Olympus's ``IIRO`` header, IFD0 the raw data with the camera's tags, IFD1 a JPEG
    (the large preview many bodies keep in the maker note is not modelled: geoloc reads none)."""
    ifd0 = Ifd({0x0100: (LONG, [8]), 0x0101: (LONG, [8]), 0x0103: (SHORT, [1]),
                0x010F: (ASCII, "OLYMPUS IMAGING CORP."), 0x0110: (ASCII, "E-M1"),
                0x0112: (SHORT, [orientation])}, strip=bytes(128),
               children={0x8825: Ifd(gps)} if gps else {})
    return build_tiff([ifd0, Ifd({0x0103: (SHORT, [6])}, jpeg=preview)], magic=b"RO")


def cr3(preview: bytes, thumbnail: bytes, orientation: int = 1, gps: dict | None = None,
        taken: str = "2024:05:01 10:00:00") -> bytes:
    """A CR3 as Canon's bodies lay it out: ``ftyp crx``, ``moov`` holding Canon's uuid box with
    CMT1 (IFD0), CMT2 (EXIF IFD), CMT4 (GPS IFD) and THMB, then the preview uuid box with
    PRVW, then ``mdat``."""
    def box(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", 8 + len(payload)) + kind + payload

    def image_box(kind: bytes, jpeg: bytes) -> bytes:
        w, h = Image.open(io.BytesIO(jpeg)).size
        if kind == b"THMB":
            head = struct.pack(">IHHIHH", 0, w, h, len(jpeg), 1, 0)
        else:
            head = struct.pack(">IHHHHI", 0, 1, w, h, 1, len(jpeg))
        return box(kind, head + jpeg)

    cmt1 = build_tiff([Ifd({0x010F: (ASCII, "Canon"), 0x0110: (ASCII, "Canon EOS R5"),
                            0x0112: (SHORT, [orientation]), 0x0132: (ASCII, taken)})])
    cmt2 = build_tiff([Ifd({0x9003: (ASCII, taken)})])
    canon = (bytes.fromhex("85c0b687820f11e08111f4ce462b6a48") + box(b"CNCV", b"CanonCR3_001/00.10.00/00.00.00")
             + box(b"CMT1", cmt1) + box(b"CMT2", cmt2))
    if gps:
        canon += box(b"CMT4", build_tiff([Ifd(gps)]))
    canon += image_box(b"THMB", thumbnail)
    moov = box(b"moov", box(b"uuid", canon))
    prvw = box(b"uuid", bytes.fromhex("eaf42b5e1c984b88b9fbb7dc406e4d16") + struct.pack(">II", 0, 1)
               + image_box(b"PRVW", preview))
    ftyp = box(b"ftyp", b"crx " + struct.pack(">I", 1) + b"crx isom")
    return ftyp + moov + prvw + box(b"mdat", b"\0" * 16)


def raf(jpeg: bytes, model: str = "X-T3") -> bytes:
    """A Fujifilm RAF: its header, then the camera's full JPEG (with its own EXIF) at the
    offset the header gives; the CFA sections are left empty."""
    header = (b"FUJIFILMCCD-RAW " + b"0201" + b"FF383501" + model.encode().ljust(32, b"\0")
              + b"0100" + b"\0" * 20)
    assert len(header) == 84
    offset = 160
    directory = struct.pack(">IIIIII", offset, len(jpeg), 0, 0, 0, 0)
    body = header + directory
    return body + b"\0" * (offset - len(body)) + jpeg
