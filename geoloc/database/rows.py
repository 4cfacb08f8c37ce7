"""``descriptors.idx``: one fixed-size entry per descriptor row, beside the rows themselves.

An entry holds the sha256 of the photo file the row was computed from, the CRC-32 of the row's
bytes, and a CRC-32 of the entry itself. Kept outside SQLite on purpose: it survives the loss of
``photos.sqlite`` (``--repair`` then finds each photo's descriptor again by the file's hash,
instead of running the network over the whole archive), and it pins damage to the exact rows.
"""

from __future__ import annotations

import struct
import zlib

ENTRY = 40  # sha256 (32 bytes) + CRC-32 of the row (4) + CRC-32 of the 36 bytes before (4)
_ZERO = bytes(32)


def row_crc(row: bytes | memoryview) -> int:
    return zlib.crc32(row) & 0xFFFFFFFF


def entry(sha256_hex: str | None, row: bytes | memoryview) -> bytes:
    digest = _digest(sha256_hex)
    head = digest + struct.pack("<I", row_crc(row))
    return head + struct.pack("<I", zlib.crc32(head) & 0xFFFFFFFF)


def entries(sha256s: list[str | None], rows: bytes | memoryview, row_bytes: int) -> bytes:
    view = memoryview(rows)
    return b"".join(entry(s, view[i * row_bytes:(i + 1) * row_bytes]) for i, s in enumerate(sha256s))


def parse(raw: bytes | memoryview) -> tuple[bytes, int] | None:
    """(sha256 digest, row CRC) of one entry, or None when the entry itself is damaged."""
    raw = bytes(raw)
    if len(raw) != ENTRY or zlib.crc32(raw[:36]) & 0xFFFFFFFF != struct.unpack("<I", raw[36:])[0]:
        return None
    return raw[:32], struct.unpack("<I", raw[32:36])[0]


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
