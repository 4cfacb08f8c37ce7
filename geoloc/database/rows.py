"""``descriptors.idx``: one fixed-size entry per descriptor row, beside the rows themselves.

An entry holds the sha256 of the photo file the row was computed from, the CRC-32 of the row's
descriptor bytes and of its verification map (``maps.i8``), and a CRC-32 of the entry itself.
Kept outside SQLite on purpose: it survives the loss of ``photos.sqlite`` (``--repair`` then
finds each photo's descriptor again by the file's hash, instead of running the network over
the whole archive), and it pins damage to the exact rows.
"""

from __future__ import annotations

import struct
import zlib

#: sha256 (32) + CRC-32 of the descriptor row (4) + CRC-32 of its map slot (4) + reserved (4)
#: + CRC-32 of the 44 bytes before (4).
ENTRY = 48
_ZERO = bytes(32)
_BODY = struct.Struct("<III")


def row_crc(row: bytes | memoryview) -> int:
    return zlib.crc32(row) & 0xFFFFFFFF


def entry(sha256_hex: str | None, row: bytes | memoryview, map_slot: bytes | memoryview = b"") -> bytes:
    head = _digest(sha256_hex) + _BODY.pack(row_crc(row), row_crc(map_slot), 0)
    return head + struct.pack("<I", zlib.crc32(head) & 0xFFFFFFFF)


def entries(sha256s: list[str | None], rows: bytes | memoryview, row_bytes: int,
            slots: bytes | memoryview = b"", slot_bytes: int = 0) -> bytes:
    view, maps = memoryview(rows), memoryview(slots)
    return b"".join(
        entry(s, view[i * row_bytes:(i + 1) * row_bytes], maps[i * slot_bytes:(i + 1) * slot_bytes])
        for i, s in enumerate(sha256s))


def parse(raw: bytes | memoryview) -> tuple[bytes, int, int] | None:
    """(sha256 digest, descriptor CRC, map CRC) of one entry, or None when the entry is damaged."""
    raw = bytes(raw)
    if len(raw) != ENTRY or zlib.crc32(raw[:44]) & 0xFFFFFFFF != struct.unpack("<I", raw[44:])[0]:
        return None
    desc_crc, map_crc, _ = _BODY.unpack(raw[32:44])
    return raw[:32], desc_crc, map_crc


def _digest(sha256_hex: str | None) -> bytes:
    if not sha256_hex:
        return _ZERO
    try:
        digest = bytes.fromhex(sha256_hex)
    except ValueError:
        return _ZERO
    return digest if len(digest) == 32 else _ZERO


def hex_of(digest: bytes) -> str | None:
    return None if digest == _ZERO else digest.hex()
