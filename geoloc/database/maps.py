"""``maps.i8``: each descriptor row's verification map, in a fixed-size slot of the same row.

Re-ranking verifies a query against its candidates' dense maps (:mod:`geoloc.retrieval.verify`); running
the network over 20 candidates' photos again would cost seconds a query, so the map is stored
with the descriptor at index time. A slot is ``h, w`` (two uint16), then ``cells`` × ``channels``
int8 descriptors, then ``cells`` float16 scales: a photo whose map has fewer cells leaves the
rest zero. One slot per row, the same row as the descriptor: appended, adopted, compacted and
checked (its CRC-32 is in ``descriptors.idx``) together with it.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

_HEAD = struct.Struct("<HH")
#: Channels a stored map keeps at most (a fixed random rotation, :func:`geoloc.retrieval.verify.projection`,
#: reduces wider ones).
MAX_CHANNELS = 128


def stored_channels(channels: int) -> int:
    return min(channels, MAX_CHANNELS)


@dataclass(frozen=True)
class MapSpec:
    """How a database's maps are stored; recorded in its manifest under ``maps``."""

    stride: int  # pixels of the network's input per cell
    channels: int  # stored channels (after the fixed projection of wider maps)
    source_channels: int  # what the network gives
    cells: int  # cells a slot holds: enough for the largest map at the database's max side

    @property
    def slot_bytes(self) -> int:
        return _HEAD.size + self.cells * (self.channels + 2)

    @classmethod
    def for_model(cls, stride: int, source_channels: int, max_side: int) -> "MapSpec":
        side = math.ceil(max_side / stride)
        return cls(int(stride), stored_channels(source_channels), int(source_channels), side * side)

    def to_dict(self) -> dict:
        return {"stride": self.stride, "channels": self.channels, "source_channels": self.source_channels,
                "cells": self.cells, "dtype": "int8"}

    @classmethod
    def from_manifest(cls, manifest: dict) -> "MapSpec | None":
        data = manifest.get("maps")
        if not data:
            return None
        return cls(int(data["stride"]), int(data["channels"]), int(data["source_channels"]), int(data["cells"]))

    def encode(self, q: np.ndarray | None, scales: np.ndarray | None, h: int, w: int) -> bytes:
        """One slot; an empty one (h = w = 0) when the map is unknown."""
        slot = bytearray(self.slot_bytes)
        if q is None or h * w == 0:
            return bytes(slot)
        n = h * w
        if n > self.cells or q.shape != (n, self.channels):
            raise ValueError(f"a {h}×{w} map of {q.shape[1]} channels does not fit a slot of "
                             f"{self.cells} cells × {self.channels}")
        _HEAD.pack_into(slot, 0, h, w)
        start = _HEAD.size
        slot[start:start + n * self.channels] = np.ascontiguousarray(q, dtype=np.int8).tobytes()
        start = _HEAD.size + self.cells * self.channels
        slot[start:start + 2 * n] = np.ascontiguousarray(scales, dtype=np.float16).tobytes()
        return bytes(slot)

    def decode(self, slot: bytes | memoryview) -> tuple[np.ndarray, np.ndarray, int, int] | None:
        """(int8 N×C, float16 scales, h, w), or None for an empty slot."""
        if len(slot) != self.slot_bytes:
            return None
        h, w = _HEAD.unpack_from(slot, 0)
        n = h * w
        if n == 0 or n > self.cells:
            return None
        start = _HEAD.size
        q = np.frombuffer(slot, dtype=np.int8, count=n * self.channels, offset=start).reshape(n, self.channels)
        scales = np.frombuffer(slot, dtype=np.float16, count=n, offset=_HEAD.size + self.cells * self.channels)
        return q, scales, h, w
