"""RAW camera files: where the JPEG preview a camera embeds is, and what the file says about
orientation and GPS when ExifRead cannot read it.

geoloc never develops sensor data: a place-recognition network needs a photo's content, not its
last bit of dynamic range, and every camera already embeds a JPEG rendering of the shot for its
own screen. So a RAW file's pixels are its largest embedded baseline JPEG, and its orientation
is the RAW's own (previews are stored as the sensor saw them, as the photo itself is).

Containers, and what is read from each:

- **TIFF-based** (DNG, CR2, NEF, ARW, ORF, RW2): every IFD of the chain and their SubIFDs; a
  JPEG is an IFD's ``JPEGInterchangeFormat``, its one JPEG-compressed strip (with
  ``JPEGTables`` spliced in when the strip leaves them out) or Panasonic's ``JpgFromRaw``. Lossless JPEG (the raw data of CR2 and many
  DNGs) and CFA/LinearRaw images are not previews and are skipped. GPS, time and orientation
  come from the TIFF structure, which ExifRead reads. Previews kept only in a maker note
  (many Olympus ORFs, older Nikons' extra previews) are not read.
- **CR3** (ISO base media): the ``PRVW`` preview (1620×1080 on current bodies), else the
  ``THMB`` thumbnail; the ``CMT1``/``CMT2``/``CMT4`` boxes hold IFD0, the EXIF IFD and the GPS
  IFD as small TIFF structures, read here because ExifRead does not know CR3.
- **RAF** (Fujifilm): the full JPEG at the offset the header gives, with its own EXIF (GPS,
  time and orientation come from there).

Every read is bounded by the file's size; a damaged file gives "no preview" with a reason,
never an exception.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

RAW_SUFFIXES: frozenset[str] = frozenset({".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2"})

#: A preview larger than this is not believed (a full-size JPEG of a 100 MP sensor is ~40 MB).
MAX_PREVIEW_BYTES = 96 << 20
_MAX_IFDS = 64
_MAX_ENTRIES = 4096

Tags = dict[int, Any]

TIFF, CR3, RAF = "tiff", "cr3", "raf"


def is_raw_name(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in RAW_SUFFIXES


@dataclass
class Preview:
    """An embedded JPEG: where its bytes are, its size, and the tables to splice in front."""

    offset: int
    length: int
    width: int
    height: int
    tables: bytes | None = None


@dataclass
class RawFile:
    """What :func:`inspect_raw` found. ``orientation`` is the container's (``None`` for RAF,
    whose embedded JPEG carries its own EXIF); ``ifd0``/``exif``/``gps`` are set for CR3 only."""

    kind: str | None
    preview: Preview | None = None
    orientation: int | None = None
    ifd0: Tags = field(default_factory=dict)
    exif: Tags = field(default_factory=dict)
    gps: Tags = field(default_factory=dict)
    problem: str | None = None


def container_kind(head: bytes) -> str | None:
    """Which RAW container the first 16 bytes show, or None (a JPEG named .dng is a JPEG)."""
    if head[:4] in (b"II*\x00", b"MM\x00*", b"IIRO", b"IIRS", b"MMOR", b"IIU\x00"):
        return TIFF
    if head[4:12] == b"ftypcrx ":
        return CR3
    if head.startswith(b"FUJIFILMCCD-RAW"):
        return RAF
    return None


def inspect_raw(fh: BinaryIO) -> RawFile:
    """The preview, orientation and (for CR3) tags of a RAW file; never raises for bad data."""
    try:
        size = os.fstat(fh.fileno()).st_size
    except (AttributeError, OSError, ValueError):  # not a real file (io.BytesIO)
        size = _size(fh)
    reader = _Reader(fh, size)
    kind = container_kind(reader.read(0, 16))
    raw = RawFile(kind)
    try:
        if kind == TIFF:
            _inspect_tiff(reader, raw)
        elif kind == CR3:
            _inspect_cr3(reader, raw)
        elif kind == RAF:
            _inspect_raf(reader, raw)
    except (_Bad, struct.error, ValueError, OverflowError) as exc:
        raw.problem = raw.problem or f"damaged {kind.upper() if kind else 'RAW'} structure ({exc})"
    if raw.preview is None and raw.problem is None:
        raw.problem = "no embedded JPEG preview (geoloc reads the preview a camera embeds, not sensor data)"
    return raw


def preview_bytes(fh: BinaryIO, preview: Preview) -> bytes:
    """The embedded JPEG as a complete stream (tables spliced in where the file keeps them apart)."""
    fh.seek(preview.offset)
    data = fh.read(preview.length)
    if preview.tables:
        # tables: SOI, DQT/DHT…, EOI; the strip: SOI, SOF…: one stream without the inner pair.
        tables = preview.tables[:-2] if preview.tables.endswith(b"\xff\xd9") else preview.tables
        data = tables + data[2:]
    return data


def _size(fh: BinaryIO) -> int:
    here = fh.tell()
    fh.seek(0, os.SEEK_END)
    end = fh.tell()
    fh.seek(here)
    return end


class _Bad(ValueError):
    pass


class _Reader:
    """Bounded reads at absolute offsets."""

    def __init__(self, fh: BinaryIO, size: int):
        self.fh = fh
        self.size = size

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset > self.size:
            raise _Bad(f"offset {offset} outside the file")
        self.fh.seek(offset)
        return self.fh.read(min(length, self.size - offset))

    def exact(self, offset: int, length: int) -> bytes:
        data = self.read(offset, length)
        if len(data) != length:
            raise _Bad(f"{length} bytes at {offset} run past the end of the file")
        return data


# --- TIFF structures -------------------------------------------------------------------------

_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
NEW_SUBFILE_TYPE, IMAGE_WIDTH, COMPRESSION, PHOTOMETRIC = 0x00FE, 0x0100, 0x0103, 0x0106
STRIP_OFFSETS, ORIENTATION, STRIP_BYTE_COUNTS, SUB_IFDS = 0x0111, 0x0112, 0x0117, 0x014A
JPEG_TABLES, JPEG_OFFSET, JPEG_LENGTH = 0x015B, 0x0201, 0x0202
PANASONIC_JPEG = 0x002E  # RW2's IFD0: the whole JPEG as one UNDEFINED value
EXIF_IFD, GPS_IFD = 0x8769, 0x8825
_RAW_PHOTOMETRIC = {32803, 34892}  # CFA, LinearRaw: sensor data, not a picture


class _Tiff:
    """One TIFF structure inside a file (at ``base``: 0 for a TIFF file, a box for CR3)."""

    def __init__(self, reader: _Reader, base: int = 0, length: int | None = None):
        self.r = reader
        self.base = base
        self.end = reader.size if length is None else min(reader.size, base + length)
        head = reader.exact(base, 8)
        if head[:2] == b"II":
            self.order = "<"
        elif head[:2] == b"MM":
            self.order = ">"
        else:
            raise _Bad("no TIFF byte order mark")
        self.first = struct.unpack(self.order + "I", head[4:8])[0]

    def entries(self, offset: int) -> tuple[dict[int, tuple[int, int, bytes, int]], int]:
        """``{tag: (type, count, value bytes or offset field, field position)}`` and the next IFD."""
        at = self.base + offset
        if offset <= 0 or at + 2 > self.end:
            raise _Bad(f"IFD offset {offset} outside the structure")
        count = struct.unpack(self.order + "H", self.r.exact(at, 2))[0]
        if count > _MAX_ENTRIES:
            raise _Bad(f"an IFD of {count} entries")
        data = self.r.exact(at + 2, count * 12 + 4)
        out: dict[int, tuple[int, int, bytes, int]] = {}
        for i in range(count):
            tag, typ, n = struct.unpack(self.order + "HHI", data[i * 12:i * 12 + 8])
            out.setdefault(tag, (typ, n, data[i * 12 + 8:i * 12 + 12], at + 2 + i * 12 + 8))
        next_ifd = struct.unpack(self.order + "I", data[count * 12:count * 12 + 4])[0]
        return out, next_ifd

    def values(self, entry: tuple[int, int, bytes, int]) -> Any:
        """An entry's value in ExifRead's forms: text, a list of ints, ``(num, den)`` rationals."""
        typ, count, field_bytes, _ = entry
        size = _TYPE_SIZES.get(typ)
        if size is None or count > 1 << 20:
            return None
        total = size * count
        if total <= 4:
            raw = field_bytes[:total]
        else:
            offset = struct.unpack(self.order + "I", field_bytes)[0]
            if self.base + offset + total > self.end:
                return None
            raw = self.r.exact(self.base + offset, total)
        o = self.order
        if typ == 2:
            return raw.split(b"\x00", 1)[0].decode("latin-1")
        if typ in (1, 7):
            return list(raw)
        if typ == 6:
            return list(struct.unpack(f"{o}{count}b", raw))
        if typ == 3:
            return list(struct.unpack(f"{o}{count}H", raw))
        if typ == 8:
            return list(struct.unpack(f"{o}{count}h", raw))
        if typ in (4, 13):
            return list(struct.unpack(f"{o}{count}I", raw))
        if typ == 9:
            return list(struct.unpack(f"{o}{count}i", raw))
        if typ in (5, 10):
            nums = struct.unpack(f"{o}{2 * count}{'I' if typ == 5 else 'i'}", raw)
            return [(nums[i], nums[i + 1]) for i in range(0, len(nums), 2)]
        if typ == 11:
            return list(struct.unpack(f"{o}{count}f", raw))
        if typ == 12:
            return list(struct.unpack(f"{o}{count}d", raw))
        return None

    def tags(self, offset: int) -> Tags:
        entries, _ = self.entries(offset)
        return {tag: self.values(e) for tag, e in entries.items()}

    def first_int(self, entries: dict, tag: int) -> int | None:
        entry = entries.get(tag)
        if entry is None:
            return None
        values = self.values(entry)
        if isinstance(values, list) and values and isinstance(values[0], int):
            return values[0]
        return None


def _inspect_tiff(reader: _Reader, raw: RawFile) -> None:
    tiff = _Tiff(reader)
    seen: set[int] = set()
    queue: list[tuple[int, int]] = [(tiff.first, 0)]  # (offset, SubIFD depth)
    previews: list[Preview] = []
    first = True
    while queue and len(seen) < _MAX_IFDS:
        offset, depth = queue.pop(0)
        if offset in seen or offset <= 0:
            continue
        seen.add(offset)
        try:
            entries, next_ifd = tiff.entries(offset)
        except _Bad:
            if first:
                raise
            continue
        if first:
            raw.orientation = _orientation(tiff.first_int(entries, ORIENTATION))
            first = False
        previews.extend(_tiff_jpegs(tiff, entries))
        if depth == 0 and next_ifd:
            queue.append((next_ifd, 0))
        if depth < 3 and SUB_IFDS in entries:
            subs = tiff.values(entries[SUB_IFDS]) or []
            queue.extend((int(s), depth + 1) for s in subs if isinstance(s, int))
    raw.preview = _largest(previews)


def _tiff_jpegs(tiff: _Tiff, entries: dict) -> list[Preview]:
    found = []
    offset, length = tiff.first_int(entries, JPEG_OFFSET), tiff.first_int(entries, JPEG_LENGTH)
    if offset and length:
        preview = _jpeg_at(tiff.r, tiff.base + offset, length)
        if preview is not None:
            found.append(preview)
    blob = entries.get(PANASONIC_JPEG)
    if blob is not None and blob[0] == 7 and blob[1] > 4:
        preview = _jpeg_at(tiff.r, tiff.base + struct.unpack(tiff.order + "I", blob[2])[0], blob[1])
        if preview is not None:
            found.append(preview)
    compression = tiff.first_int(entries, COMPRESSION)
    photometric = tiff.first_int(entries, PHOTOMETRIC)
    if compression in (6, 7) and photometric not in _RAW_PHOTOMETRIC and STRIP_OFFSETS in entries:
        offsets = tiff.values(entries[STRIP_OFFSETS]) or []
        counts = tiff.values(entries.get(STRIP_BYTE_COUNTS, (3, 0, b"", 0))) or []
        if len(offsets) == 1 and len(counts) == 1:
            tables = None
            if JPEG_TABLES in entries:
                value = tiff.values(entries[JPEG_TABLES])
                tables = bytes(value) if isinstance(value, list) else None
            preview = _jpeg_at(tiff.r, tiff.base + int(offsets[0]), int(counts[0]), tables)
            if preview is not None:
                found.append(preview)
    return found


def _orientation(value: int | None) -> int:
    return value if value is not None and 1 <= value <= 8 else 1


def _largest(previews: list[Preview]) -> Preview | None:
    return max(previews, key=lambda p: (p.width * p.height, p.length), default=None)


# --- JPEG streams ----------------------------------------------------------------------------

_SOF_DECODABLE = {0xC0, 0xC1, 0xC2}  # baseline, extended, progressive (Huffman)
_SOF_OTHER = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_at(reader: _Reader, offset: int, length: int, tables: bytes | None = None) -> Preview | None:
    """A Preview when ``length`` bytes at ``offset`` start a JPEG that Pillow decodes (baseline
    or progressive), with its size from the frame header; None otherwise (lossless JPEG raw
    data, garbage, a stream past the end of the file)."""
    if length < 4 or length > MAX_PREVIEW_BYTES or offset + length > reader.size:
        return None
    if reader.read(offset, 2) != b"\xff\xd8":
        return None
    size = _frame_size(reader, offset, offset + length)
    if size is None:
        return None
    return Preview(offset, length, size[0], size[1], tables)


def _frame_size(reader: _Reader, start: int, end: int) -> tuple[int, int] | None:
    """(width, height) from the first frame header of a decodable JPEG, else None.

    Walks the marker segments (EXIF, ICC profiles, tables) from the start of the stream, reading
    only their headers, until the frame header; at most 256 segments."""
    at = start + 2
    for _ in range(256):
        head = reader.read(at, 4)
        if len(head) < 4 or at + 4 > end or head[0] != 0xFF:
            return None
        marker = head[1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            at += 2
            continue
        if marker in _SOF_DECODABLE:
            frame = reader.read(at + 5, 4)
            if len(frame) < 4:
                return None
            height, width = struct.unpack(">HH", frame)
            return (width, height) if width and height else None
        if marker in _SOF_OTHER or marker in (0xDA, 0xD9, 0xD8):
            return None  # lossless/arithmetic coding, or image data before any frame header
        at += 2 + struct.unpack(">H", head[2:4])[0]
    return None


# --- CR3 (ISO base media) -------------------------------------------------------------------

_CANON_UUID = bytes.fromhex("85c0b687820f11e08111f4ce462b6a48")
_PREVIEW_UUID = bytes.fromhex("eaf42b5e1c984b88b9fbb7dc406e4d16")


def _boxes(reader: _Reader, start: int, end: int):
    """``(type, payload start, payload end)`` of the boxes between ``start`` and ``end``."""
    at = start
    count = 0
    while at + 8 <= end and count < 4096:
        count += 1
        size, kind = struct.unpack(">I4s", reader.exact(at, 8))
        header = 8
        if size == 1:
            size = struct.unpack(">Q", reader.exact(at + 8, 8))[0]
            header = 16
        elif size == 0:
            size = end - at
        if size < header or at + size > end:
            raise _Bad(f"box {kind!r} runs past its parent")
        yield kind, at + header, at + size
        at += size


def _inspect_cr3(reader: _Reader, raw: RawFile) -> None:
    """Metadata from Canon's box in ``moov``, the preview from its own uuid box; what was found
    before a damaged box is kept (a broken preview box still leaves the thumbnail)."""
    previews: list[Preview] = []
    try:
        for kind, start, end in _boxes(reader, 0, reader.size):
            if kind == b"moov":
                for sub, s_start, s_end in _boxes(reader, start, end):
                    if sub == b"uuid" and reader.exact(s_start, 16) == _CANON_UUID:
                        _cr3_canon_box(reader, s_start + 16, s_end, raw, previews)
            elif kind == b"uuid" and end - start > 24 and reader.exact(start, 16) == _PREVIEW_UUID:
                # 16 bytes of uuid, 8 of Canon's own, then the PRVW box.
                for sub, s_start, s_end in _boxes(reader, start + 24, end):
                    if sub == b"PRVW":
                        previews.extend(_jpeg_in(reader, s_start, s_end))
    finally:
        raw.preview = _largest(previews)


def _cr3_canon_box(reader: _Reader, start: int, end: int, raw: RawFile, previews: list) -> None:
    for kind, s_start, s_end in _boxes(reader, start, end):
        if kind in (b"CMT1", b"CMT2", b"CMT4"):
            try:
                tiff = _Tiff(reader, s_start, s_end - s_start)
                tags = tiff.tags(tiff.first)
            except (_Bad, struct.error):
                continue
            if kind == b"CMT1":
                raw.ifd0 = tags
                value = tags.get(ORIENTATION)
                raw.orientation = _orientation(value[0] if isinstance(value, list) and value else None)
            elif kind == b"CMT2":
                raw.exif = tags
            else:
                raw.gps = tags
        elif kind == b"THMB":
            previews.extend(_jpeg_in(reader, s_start, s_end))
    if raw.orientation is None:
        raw.orientation = 1


def _jpeg_in(reader: _Reader, start: int, end: int) -> list[Preview]:
    """The JPEG inside a preview box: it starts after a small header of Canon's own."""
    head = reader.read(start, min(end - start, 64))
    at = head.find(b"\xff\xd8\xff")
    if at < 0:
        return []
    preview = _jpeg_at(reader, start + at, end - start - at)
    return [preview] if preview is not None else []


# --- RAF (Fujifilm) ---------------------------------------------------------------------------


def _inspect_raf(reader: _Reader, raw: RawFile) -> None:
    offset, length = struct.unpack(">II", reader.exact(84, 8))
    raw.preview = _jpeg_at(reader, offset, length)
    raw.orientation = None  # the embedded JPEG's own EXIF says
