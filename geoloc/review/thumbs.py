"""Thumbnails for the review page, cached on disk under a size bound.

Decoding a 24-megapixel JPEG takes a tenth of a second; a page of fifty rows with their
candidates would take seconds every time it is shown. Each thumbnail is made once, named by
the photo's path, size and modification time (an edited photo gets a new one), and kept in
``$GEOLOC_HOME/cache/review-thumbs``; past ``max_bytes`` the least recently used go first.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path

from geoloc.files import atomic_write
from geoloc.paths import cache_dir

#: The longest side of a thumbnail: a row's photo, a candidate, the matches view.
SIDE = 320
#: The cache's bound on disk: about 20,000 thumbnails.
MAX_BYTES = 256 << 20


class ThumbCache:
    def __init__(self, folder: Path | None = None, max_bytes: int = MAX_BYTES, side: int = SIDE):
        self.folder = Path(folder) if folder is not None else cache_dir() / "review-thumbs"
        self.max_bytes = max_bytes
        self.side = side
        self._lock = threading.Lock()
        self._total: int | None = None

    def _name(self, path: str) -> Path | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{self.side}".encode("utf-8", "surrogateescape")
        return self.folder / (hashlib.sha256(key).hexdigest()[:32] + ".jpg")

    def get(self, path: str) -> bytes | None:
        """The photo's thumbnail as JPEG bytes; None when the photo cannot be read."""
        target = self._name(path)
        if target is None:
            return None
        try:
            data = target.read_bytes()
            os.utime(target)  # recently used: pruned last
            return data
        except OSError:
            pass
        data = make_thumbnail(Path(path), self.side)
        if data is None:
            return None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(target, data, durable=False)  # a cache: a lost file is made again
            self._grew(len(data))
        except OSError:
            pass  # a full disk costs the cache, not the page
        return data

    def _grew(self, n: int) -> None:
        with self._lock:
            if self._total is None:
                self._total = sum(e.stat().st_size for e in os.scandir(self.folder) if e.is_file())
            else:
                self._total += n
            if self._total > self.max_bytes:
                self._total = self._prune()

    def _prune(self) -> int:
        """Remove the least recently used thumbnails down to three quarters of the bound."""
        entries = []
        for e in os.scandir(self.folder):
            if e.is_file() and e.name.endswith(".jpg"):
                st = e.stat()
                entries.append((st.st_mtime_ns, st.st_size, e.path))
        entries.sort()
        total = sum(size for _, size, _ in entries)
        for _, size, path in entries:
            if total <= self.max_bytes * 3 // 4:
                break
            try:
                os.unlink(path)
                total -= size
            except OSError:
                pass
        return total


def make_thumbnail(path: Path, side: int, quality: int = 75) -> bytes | None:
    """A JPEG of the photo, upright, longest side ``side``; None when it cannot be decoded."""
    try:
        from geoloc.photos import load_image

        image = load_image(path, side)
        image.thumbnail((side, side))
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="JPEG", quality=quality)
    except Exception:  # a thumbnail is decoration: the row still shows its estimate
        return None
    return buf.getvalue()
