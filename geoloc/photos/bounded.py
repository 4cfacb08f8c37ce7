"""A sidecar read whole but never past a size: a JSON or XML file of gigabytes named like a
sidecar is not one, and must not be read into memory for every photo beside it."""

from __future__ import annotations

import os


def read_bounded(path: str | os.PathLike, limit: int, too_large: str) -> tuple[bytes | None, str | None]:
    """``(bytes, None)``, or ``(None, why)``: unreadable, or larger than ``limit`` (``why``
    ends with ``too_large``, what that means for this kind of sidecar)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        return None, f"cannot read ({exc.strerror or exc})"
    if len(data) > limit:
        return None, f"larger than {limit >> 20} MiB, {too_large}"
    return data, None
