"""Descriptors computed once per dataset and model, reused by every later evaluation.

Pitts30k-test has 10,000 database images and 6,816 queries; extracting them takes hours on a
CPU, while changing the threshold, N, or the estimator takes seconds. So the database side of a
benchmark is a geoloc database (the index command's machinery, incremental by path, size and
mtime) and the query descriptors sit beside it in one ``.npy`` file with an index of what each row
was computed from. A changed file, model, weights, preprocessing or vocabulary invalidates
exactly what it touches.

Layout: ``$GEOLOC_HOME/cache/eval/<dataset>-<fingerprint>/<model>-<settings>/``
``database/`` (a geoloc database), ``queries.npy``, ``queries.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoloc.files import atomic_write, replacing

CACHE_FORMAT = 1


def _safe(text: str, limit: int = 40) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-") or "x"
    return s[:limit]


def settings_key(model_name: str, weights_hash: str | None, settings: dict) -> str:
    """A folder name for one model with one preprocessing: readable name + short hash."""
    blob = json.dumps({"model": model_name, "weights": weights_hash, **settings}, sort_keys=True, default=str)
    return f"{_safe(Path(model_name).name if os.sep in model_name else model_name)}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def eval_cache_dir(dataset_name: str, fingerprint: str, model_key: str) -> Path:
    from geoloc.paths import cache_dir

    return cache_dir() / "eval" / f"{_safe(dataset_name)}-{fingerprint[:16]}" / model_key


def file_stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


@dataclass
class CacheStats:
    computed: int = 0
    cached: int = 0


class QueryDescriptorCache:
    """Query descriptors keyed by (path, size, mtime_ns) and the model state that made them.

    ``state`` identifies everything else the descriptors depend on (e.g. the hash of a fitted
    vocabulary); a different state empties the cache instead of mixing descriptors.
    """

    def __init__(self, folder: Path, state: str, slot_bytes: int = 0):
        """``slot_bytes``: each query's verification map slot is cached too (re-ranking), as
        the database stores them (:mod:`geoloc.database.maps`)."""
        self.folder = Path(folder)
        self.state = state
        self.slot_bytes = slot_bytes
        self._rows: dict[str, tuple[int, int, int]] = {}  # path -> (size, mtime_ns, row)
        self._matrix: np.ndarray | None = None
        self._slots: np.ndarray | None = None
        self._load()

    @property
    def _index_file(self) -> Path:
        return self.folder / "queries.json"

    @property
    def _matrix_file(self) -> Path:
        return self.folder / "queries.npy"

    @property
    def _slots_file(self) -> Path:
        return self.folder / "queries.maps.npy"

    def _load(self) -> None:
        try:
            meta = json.loads(self._index_file.read_text(encoding="utf-8"))
            if meta.get("format") != CACHE_FORMAT or meta.get("state") != self.state:
                return
            matrix = np.load(self._matrix_file, mmap_mode="r")
            slots = np.load(self._slots_file, mmap_mode="r") if self.slot_bytes else None
            rows = {p: (int(s), int(m), int(r)) for p, (s, m, r) in meta["rows"].items()}
            if rows and max(r for _, _, r in rows.values()) >= len(matrix):
                return
            if slots is not None and (len(slots) != len(matrix) or slots.shape[1] != self.slot_bytes):
                return
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return  # missing or damaged: recompute
        self._rows, self._matrix, self._slots = rows, matrix, slots

    def lookup(self, paths: Sequence[Path]) -> tuple[dict[int, tuple], list[int]]:
        """(descriptor, map slot) found for ``paths`` (by position), and the positions still to
        compute."""
        found: dict[int, tuple] = {}
        missing: list[int] = []
        for i, p in enumerate(paths):
            entry = self._rows.get(str(p))
            stamp = file_stamp(p)
            if entry is not None and self._matrix is not None and stamp is not None and stamp == entry[:2]:
                slot = bytes(self._slots[entry[2]]) if self._slots is not None else None
                found[i] = (np.asarray(self._matrix[entry[2]], dtype=np.float32), slot)
            else:
                missing.append(i)
        return found, missing

    def get_or_compute(
        self,
        paths: Sequence[Path],
        compute: Callable[[list[Path]], tuple[np.ndarray, dict[int, str], np.ndarray | None]],
        dim: int,
    ) -> tuple[np.ndarray, np.ndarray | None, dict[int, str], CacheStats]:
        """All descriptors of ``paths`` (rows of NaN for failures), their map slots (rows of
        ``slot_bytes``, when cached maps are wanted) and per-position errors.

        ``compute(paths)`` returns (descriptors for those paths, {position: error}, slots) and
        is called once, with only the paths not already cached.
        """
        found, missing = self.lookup(paths)
        out = np.full((len(paths), dim), np.nan, dtype=np.float32)
        slots = np.zeros((len(paths), self.slot_bytes), dtype=np.uint8) if self.slot_bytes else None
        for i, (d, slot) in found.items():
            if d.shape == (dim,):
                out[i] = d
                if slots is not None:
                    slots[i] = np.frombuffer(slot, dtype=np.uint8)
            else:
                missing.append(i)
        missing.sort()
        errors: dict[int, str] = {}
        stats = CacheStats(computed=0, cached=len(paths) - len(missing))
        if missing:
            todo = [paths[i] for i in missing]
            desc, errs, new_slots = compute(todo)
            for j, i in enumerate(missing):
                if j in errs:
                    errors[i] = errs[j]
                else:
                    out[i] = desc[j]
                    if slots is not None and new_slots is not None:
                        slots[i] = new_slots[j]
            stats.computed = len(missing) - len(errs)
            self._store(paths, out, errors, slots)
        return out, slots, errors, stats

    def _store(self, paths: Sequence[Path], matrix: np.ndarray, errors: dict[int, str],
               slots: np.ndarray | None = None) -> None:
        """Write the current query set (failures left out) atomically; cache trouble is not fatal."""
        stamps = {i: file_stamp(p) for i, p in enumerate(paths) if i not in errors}
        keep = [i for i, stamp in stamps.items() if stamp is not None]
        rows = {str(paths[i]): (*stamps[i], r) for r, i in enumerate(keep)}  # type: ignore[misc]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if slots is not None:
                with replacing(self._slots_file, durable=False) as tmp:
                    with open(tmp, "wb") as fh:
                        np.save(fh, np.ascontiguousarray(slots[keep]))
            with replacing(self._matrix_file, durable=False) as tmp:
                with open(tmp, "wb") as fh:  # a file object: np.save would append ".npy" to a name
                    np.save(fh, np.ascontiguousarray(matrix[keep], dtype=np.float32))
            meta = {"format": CACHE_FORMAT, "state": self.state, "rows": rows}
            atomic_write(self._index_file, json.dumps(meta), durable=False)
        except OSError as exc:
            from geoloc.console import warn

            warn(f"{self.folder}: cannot write the descriptor cache ({exc.strerror or exc}); next run recomputes")
            return
        self._rows = rows
        self._matrix = np.load(self._matrix_file, mmap_mode="r")
        self._slots = np.load(self._slots_file, mmap_mode="r") if slots is not None else None
