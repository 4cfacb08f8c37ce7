"""Batched descriptor extraction with decoding in parallel threads.

Decoding (JPEG draft mode, resize, EXIF) runs in a thread pool: Pillow and hashlib release the
GIL, so threads overlap with each other and with the network, and tensors need no pickling as
they would between processes. The main thread only stacks tensors and runs the network.

Photos differ in aspect ratio, so after resizing to the longest side they differ in shape. A
batch only ever holds tensors of one exact shape (photos of one camera share it): no padding, so
a photo's descriptor does not depend on which batch it lands in. Photos waiting for a full
batch are bounded (``max_pending``); past that, the fullest shape group goes through as a
partial batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import torch

from geoloc.errors import PhotoError
from geoloc.files import sha256_file


def default_workers(device: str = "cpu") -> int:
    """Decoding threads. A GPU needs many to stay fed; on the CPU the network wants the cores
    (decoding costs a fraction of a CPU network pass), and extra threads only contend. Never
    more than the memory available holds: each thread may hold a large photo's pixels."""
    from geoloc.photos.decode import memory_bytes

    cores = os.cpu_count() or 2
    if str(device).split(":")[0] in ("cuda", "mps"):
        wanted = max(2, min(8, cores))
    else:
        wanted = max(1, min(4, cores // 4))
    return max(1, min(wanted, memory_bytes(available=True) // (512 << 20)))


def model_device(model) -> str:
    """The device a model's weights are on (``"cpu"`` for a model without parameters)."""
    try:
        return str(next(model.parameters()).device)
    except (StopIteration, AttributeError):
        return "cpu"


@dataclass
class ExtractConfig:
    #: Longest side photos are resized to; None means the model's ``Preprocess.max_side``.
    max_side: Optional[int] = None
    #: Photos per network batch; None: what the memory budget holds for the image size and the
    #: model on the device (:func:`geoloc.models.runtime.plan_batch`; 1 for VGG-16 at 640 px on
    #: the CPU, where a larger batch is only bigger, not faster).
    batch_size: int | None = None
    workers: int = field(default_factory=default_workers)
    #: Photos decoded but waiting for a batch of their shape, at most (memory bound).
    max_pending: Optional[int] = None
    #: Hash every file's content (the database uses it to tell touched from changed files).
    hash_files: bool = True
    #: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (:func:`geoloc.models.runtime.resolve_precision`).
    precision: str = "auto"


@dataclass
class Decoded:
    """One photo after the worker is done with it: a tensor ready for the network, or an error."""

    path: Path
    size: int = 0
    mtime_ns: int = 0
    tensor: Optional[torch.Tensor] = None
    meta: object = None  # geoloc.photos.PhotoMeta
    width: Optional[int] = None  # of the photo as stored, after EXIF orientation
    height: Optional[int] = None
    sha256: Optional[str] = None
    error: Optional[PhotoError] = None
    seconds: float = 0.0


@dataclass
class ExtractStats:
    """Where the time went, for the progress bar and the benchmark."""

    photos: int = 0
    errors: int = 0
    batches: int = 0
    decode_s: float = 0.0  # summed over worker threads
    wait_s: float = 0.0  # main thread waiting for decoded photos (decoding not hidden)
    network_s: float = 0.0


#: A photo up to this size is read into memory once while it is decoded (every decoding thread
#: holds at most one); a larger file (a huge TIFF or panorama) is read from disk by each step.
READ_ONCE_BYTES = 64 << 20


def decode_photo(path: Path, preprocess, max_side: int, hash_file: bool = True) -> Decoded:
    """Everything per photo that does not need the network; never raises for a bad photo."""
    from geoloc import photos

    start = time.perf_counter()
    item = Decoded(path=Path(path))
    try:
        data, st = _read_once(item.path)
        item.size, item.mtime_ns = st.st_size, st.st_mtime_ns
        if st.st_size == 0:
            raise PhotoError(path, "empty file (0 bytes)")
        image = photos.load_image(item.path, max_side, data=data)
        item.meta = photos.read_meta(item.path, data=data)
        item.width, item.height = _stored_size(item.meta, image)
        item.tensor = preprocess.to_tensor(image)
        if hash_file:
            item.sha256 = hashlib.sha256(data).hexdigest() if data is not None else sha256_file(item.path)
    except PhotoError as exc:
        item.error = exc
        item.tensor = None
    except OSError as exc:
        item.error = PhotoError(path, f"cannot read: {exc.strerror or exc}")
        item.tensor = None
    except MemoryError:
        item.error = PhotoError(path, "too large to decode in the memory available")
        item.tensor = None
    except Exception as exc:  # a decoder bug on a strange file must not stop the run
        item.error = PhotoError(path, f"cannot decode: {type(exc).__name__}: {exc}")
        item.tensor = None
    item.seconds = time.perf_counter() - start
    return item


def _read_once(path: Path) -> tuple[Optional[bytes], os.stat_result]:
    """The photo's bytes, read once for its pixels, its EXIF and its hash (one open, one stat),
    with its stat; None for the bytes of a file past :data:`READ_ONCE_BYTES`, which each step
    reads from the file instead."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > READ_ONCE_BYTES:
                return None, st
            data = fh.read(READ_ONCE_BYTES + 1)
    except OSError as exc:
        from geoloc.photos.decode import open_error_reason

        try:
            os.stat(path)
        except OSError as gone:
            raise PhotoError(path, f"cannot read: {gone.strerror or gone}") from None
        raise PhotoError(path, open_error_reason(exc)) from None
    return (data if len(data) <= READ_ONCE_BYTES else None), st


def _stored_size(meta, image) -> tuple[Optional[int], Optional[int]]:
    """The photo's full size as a viewer shows it (upright), not the size the network saw."""
    width = getattr(meta, "width", None)
    height = getattr(meta, "height", None)
    if not (width and height):
        return image.size
    if getattr(meta, "orientation", 1) in (5, 6, 7, 8):
        width, height = height, width
    return int(width), int(height)


def iter_decoded(
    paths: Iterable[Path],
    preprocess,
    max_side: int,
    workers: int,
    hash_files: bool = True,
    window: Optional[int] = None,
) -> Iterator[Decoded]:
    """Decode photos in parallel, yielding them in input order with a bounded read-ahead.

    Input order (rather than completion order) keeps batches, and so the vocabulary sample and
    the database's row order, reproducible from run to run.
    """
    workers = max(1, int(workers))
    window = window or workers * 4
    it = iter(paths)
    # Even one worker is a thread of its own: decoding then overlaps with the network.
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="geoloc-decode") as pool:
        queue: deque[Future] = deque()
        try:
            for path in it:
                queue.append(pool.submit(decode_photo, path, preprocess, max_side, hash_files))
                if len(queue) >= window:
                    yield queue.popleft().result()
            while queue:
                yield queue.popleft().result()
        finally:
            for fut in queue:
                fut.cancel()


def iter_batches(items: Iterable[Decoded], batch_size: int, max_pending: Optional[int] = None,
                 on_error: Optional[Callable[[Decoded], None]] = None) -> Iterator[list[Decoded]]:
    """Group decoded photos into batches of one tensor shape each."""
    batch_size = max(1, int(batch_size))
    max_pending = max(batch_size, max_pending or 4 * batch_size)
    groups: OrderedDict[tuple, list[Decoded]] = OrderedDict()
    pending = 0
    for item in items:
        if item.error is not None or item.tensor is None:
            if on_error is not None:
                on_error(item)
            continue
        group = groups.setdefault(tuple(item.tensor.shape), [])
        group.append(item)
        pending += 1
        if len(group) >= batch_size:
            yield groups.pop(tuple(item.tensor.shape))
            pending -= batch_size
        elif pending > max_pending:
            key = max(groups, key=lambda k: len(groups[k]))
            flushed = groups.pop(key)
            pending -= len(flushed)
            yield flushed
    for key in sorted(groups, key=lambda k: -len(groups[k])):
        yield groups[key]


class Extractor:
    """Runs photos through a model: decode in threads, batch by shape, network in this thread.

    The extractor sets the model up for its device (:func:`geoloc.models.runtime.prepare`:
    memory layout, precision) and plans the batch and the threads together: the batch from the
    memory the widest layer needs at this image size, torch's threads from what decoding costs
    beside the network (:class:`geoloc.models.runtime.CoreShare`).
    """

    def __init__(self, model, config: ExtractConfig, device: torch.device | str = "cpu"):
        from geoloc.models import runtime

        self.model = model
        self.config = config
        self.device = torch.device(device)
        self.max_side = int(config.max_side or model.preprocess.max_side)
        # Preprocess.to_tensor resizes to its own max_side: make it ours.
        self.preprocess = model.preprocess.replace(max_side=self.max_side)
        self.precision = runtime.resolve_precision(config.precision, self.device)
        runtime.prepare(model, self.device, self.precision)
        self.batch_size = int(config.batch_size or runtime.plan_batch(
            model, self.max_side, self.device, self.precision))
        self.share = runtime.CoreShare(config.workers)
        self._threads_depth = 0
        self.stats = ExtractStats()

    @classmethod
    def create(cls, model, *, max_side: Optional[int] = None, batch_size: int | None = None,
               workers: Optional[int] = None, hash_files: bool = True,
               precision: str = "auto") -> "Extractor":
        """An extractor on the device the model is on, with that device's decoding threads
        unless ``workers`` says otherwise (a GPU wants many more than the CPU can spare)."""
        device = model_device(model)
        config = ExtractConfig(max_side=max_side, batch_size=batch_size,
                               workers=workers or default_workers(device), hash_files=hash_files,
                               precision=precision)
        return cls(model, config, device=device)

    def _decoded(self, paths: Iterable[Path], hash_files: bool) -> Iterator[Decoded]:
        # Read-ahead: the next batch is decoded while the network runs this one.
        window = max(4 * self.config.workers, 2 * self.batch_size)
        stream = iter_decoded(paths, self.preprocess, self.max_side, self.config.workers,
                              hash_files=hash_files, window=window)
        while True:
            start = time.perf_counter()
            try:
                item = next(stream)
            except StopIteration:
                return
            finally:
                self.stats.wait_s += time.perf_counter() - start
            self.stats.decode_s += item.seconds
            yield item

    def _run(self, fn, batch: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        if self.device.type == "cuda":
            # Pinned pages copy asynchronously: the copy overlaps with the work queued before it.
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        else:
            batch = batch.to(self.device)
        with torch.inference_mode():
            out = fn(batch)
            if isinstance(out, tuple):  # e.g. descriptors and verification maps
                out = tuple(o.float().cpu() if self.device.type != "cpu" else o for o in out)
            elif self.device.type != "cpu":
                out = out.float().cpu()
        self.stats.network_s += time.perf_counter() - start
        return out

    def _run_checked(self, fn, items: list[Decoded], on_error) -> tuple[list[Decoded], Optional[torch.Tensor]]:
        """Run a batch; if the network rejects it, find and report the photos at fault."""
        try:
            return items, self._run(fn, torch.stack([i.tensor for i in items]))
        except (RuntimeError, ValueError) as exc:  # e.g. an image too thin for the network
            if len(items) == 1:
                item = items[0]
                item.error = PhotoError(item.path, f"the network cannot use this image ({_short(exc)})")
                item.tensor = None
                on_error(item)
                return [], None
        good, outs = [], []
        for item in items:
            kept, out = self._run_checked(fn, [item], on_error)
            if kept:
                good.extend(kept)
                outs.append(out)
        if not outs:
            return good, None
        if isinstance(outs[0], tuple):
            return good, tuple(torch.cat(parts) for parts in zip(*outs))
        return good, torch.cat(outs)

    def batches(
        self,
        paths: Iterable[Path],
        fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        on_error: Callable[[Decoded], None] = lambda item: None,
        hash_files: Optional[bool] = None,
    ) -> Iterator[tuple[list[Decoded], torch.Tensor]]:
        """Yield ``(photos, fn(images))`` per batch (``fn``: the model); unusable photos go to
        ``on_error`` instead. Output tensors are on the CPU."""
        fn = fn or self.model
        cfg = self.config
        hash_files = cfg.hash_files if hash_files is None else hash_files

        def errors(item: Decoded) -> None:
            self.stats.errors += 1
            on_error(item)

        for items, out in self._batches(paths, fn, errors, hash_files):
            self.stats.batches += 1
            self.stats.photos += len(items)
            yield items, out

    def _batches(self, paths, fn, errors, hash_files):
        cfg = self.config
        with self.cpu_threads():
            for items in iter_batches(self._decoded(paths, hash_files), self.batch_size,
                                      cfg.max_pending, on_error=errors):
                before = self.stats.network_s
                items, out = self._run_checked(fn, items, errors)
                for item in items:
                    item.tensor = None  # free the pixels before the caller stores the batch
                self._share_cores(len(items), self.stats.network_s - before)
                if items:
                    yield items, out

    def _share_cores(self, photos: int, seconds: float) -> None:
        """Re-divide the cores between torch and decoding from what was measured so far."""
        if self.device.type != "cpu" or not self._threads_depth or not photos:
            return
        threads = self.share.record(photos, seconds, self.stats.decode_s, self.stats.network_s)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)

    @contextlib.contextmanager
    def cpu_threads(self):
        """On the CPU, torch's threads as :class:`~geoloc.models.runtime.CoreShare` divides
        the cores with the decoding threads, while the network runs (nests; the outermost
        restores the process-wide setting it found)."""
        if self.device.type != "cpu":
            yield
            return
        outermost = self._threads_depth == 0
        before = torch.get_num_threads()
        if outermost:
            torch.set_num_threads(self.share.set_limit(before))
        self._threads_depth += 1
        try:
            yield
        finally:
            self._threads_depth -= 1
            if outermost:
                torch.set_num_threads(before)

    def descriptors(
        self,
        paths: Iterable[Path],
        on_error: Callable[[Decoded], None] = lambda item: None,
    ) -> Iterator[tuple[list[Decoded], np.ndarray]]:
        """Yield ``(photos, descriptors)`` batches, descriptors as float32 numpy rows."""
        for items, out in self.batches(paths, self.model, on_error):
            yield items, np.ascontiguousarray(out.numpy(), dtype=np.float32)

    def descriptors_and_maps(
        self,
        paths: Iterable[Path],
        on_error: Callable[[Decoded], None] = lambda item: None,
    ) -> Iterator[tuple[list[Decoded], np.ndarray, torch.Tensor]]:
        """Like :meth:`descriptors`, with each photo's verification map (B×C×h×w, CPU) from
        the same network pass."""
        for items, (desc, maps) in self.batches(paths, self.model.forward_with_map, on_error):
            yield items, np.ascontiguousarray(desc.numpy(), dtype=np.float32), maps

    def pool(self, features: torch.Tensor) -> np.ndarray:
        """Descriptors from local features kept earlier (the vocabulary sample)."""
        out = self._run(self.model.pool_features, features)
        return np.ascontiguousarray(out.numpy(), dtype=np.float32)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 160 else text[:157] + "..."
