"""Photos as network inputs during training, and descriptor passes over many of them.

Training decodes the same few thousand photos over and over (every tuple, every cache
refresh), so decoded tensors are kept in memory while they fit a byte budget. Decoding runs in a
thread pool (Pillow releases the GIL while it decodes and resizes); mining and the descriptor
cache stay in the main process, so nothing a worker does can be lost.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from geoloc.errors import PhotoError


class ImageSet:
    """Preprocessed tensors of a fixed list of photos, by index."""

    def __init__(
        self,
        paths: Sequence[Path],
        preprocess,
        *,
        workers: int = 4,
        memory_bytes: int = 1 << 30,
    ):
        self.paths = [Path(p) for p in paths]
        self.preprocess = preprocess
        self.max_side = int(preprocess.max_side) if getattr(preprocess, "max_side", None) else None
        self.memory_bytes = memory_bytes
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers)) if workers > 1 else None

    def __len__(self) -> int:
        return len(self.paths)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> "ImageSet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get(self, i: int) -> torch.Tensor:
        """The 3×H×W tensor of photo ``i``; :class:`PhotoError` when it cannot be decoded."""
        with self._lock:
            hit = self._cache.get(i)
            if hit is not None:
                self._cache.move_to_end(i)
                return hit
        from geoloc.photos import load_image

        image = load_image(self.paths[i], self.max_side)
        try:
            tensor = self.preprocess.to_tensor(image)
        except Exception as exc:  # a decoded image the network cannot take
            raise PhotoError(self.paths[i], f"cannot prepare image: {exc}") from None
        self._remember(i, tensor)
        return tensor

    def _remember(self, i: int, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if size > self.memory_bytes:
            return
        with self._lock:
            if i in self._cache:
                return
            self._cache[i] = tensor
            self._cached_bytes += size
            while self._cached_bytes > self.memory_bytes and self._cache:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= old.numel() * old.element_size()

    def get_many(
        self, indices: Sequence[int], on_error: Callable[[int, PhotoError], None] | None = None
    ) -> list[torch.Tensor | None]:
        """Tensors for ``indices`` in order; a failure raises, or gives None when ``on_error`` is set."""

        def one(i: int) -> torch.Tensor | None:
            try:
                return self.get(int(i))
            except PhotoError as exc:
                if on_error is None:
                    raise
                on_error(int(i), exc)
                return None

        if self._pool is None or len(indices) <= 1:
            return [one(i) for i in indices]
        return list(self._pool.map(one, indices))

    def iter_chunks(
        self,
        indices: Sequence[int],
        chunk: int,
        on_error: Callable[[int, PhotoError], None] | None = None,
    ) -> Iterator[tuple[list[int], list[torch.Tensor | None]]]:
        """Chunks of (indices, tensors), the next chunk decoding while the caller uses this one."""
        spans = [list(indices[a:a + chunk]) for a in range(0, len(indices), chunk)]
        if not spans:
            return
        if self._pool is None:
            for span in spans:
                yield span, self.get_many(span, on_error)
            return
        with ThreadPoolExecutor(max_workers=1) as ahead:
            future = ahead.submit(self.get_many, spans[0], on_error)
            for n, span in enumerate(spans):
                tensors = future.result()
                if n + 1 < len(spans):
                    future = ahead.submit(self.get_many, spans[n + 1], on_error)
                yield span, tensors


def autocast(device: torch.device, enabled: bool = True):
    """Mixed precision on CUDA (bfloat16 where the GPU has it, else float16); a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=amp_dtype(device))
    return contextlib.nullcontext()


def amp_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def forward_grouped(model, tensors: Sequence[torch.Tensor], device: torch.device, max_batch: int) -> torch.Tensor:
    """Descriptors (N×D, float32) of images of possibly different sizes, in input order.

    Images of one shape are stacked into batches of at most ``max_batch``; a collection from
    one camera is typically a single shape, so this costs nothing over plain batching.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(tuple(t.shape), []).append(i)
    outputs: list[torch.Tensor | None] = [None] * len(tensors)
    for members in groups.values():
        for a in range(0, len(members), max_batch):
            part = members[a:a + max_batch]
            batch = torch.stack([tensors[i] for i in part]).to(device, non_blocking=True)
            out = model(batch).float()
            for j, i in enumerate(part):
                outputs[i] = out[j]
    return torch.stack(outputs)  # type: ignore[arg-type]


class StopRequested(Exception):
    """Raised inside a descriptor pass when the user asked to stop (Ctrl-C)."""


@torch.no_grad()
def compute_descriptors(
    model,
    images: ImageSet,
    indices: Sequence[int],
    device: torch.device,
    *,
    batch_size: int = 16,
    amp: bool = True,
    dim: int | None = None,
    on_error: Callable[[int, PhotoError], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Descriptors of ``indices`` (len×D on the CPU, float32) under the model as it is now.

    Photos that fail to decode get a zero row and are reported through ``on_error``.
    """
    rows: list[torch.Tensor] = []
    width = dim
    for span, tensors in images.iter_chunks(indices, max(1, batch_size) * 2, on_error):
        if should_stop is not None and should_stop():
            raise StopRequested()
        ok = [j for j, t in enumerate(tensors) if t is not None]
        chunk_out = None
        if ok:
            with autocast(device, amp):
                chunk_out = forward_grouped(model, [tensors[j] for j in ok], device, batch_size).cpu()
            width = chunk_out.shape[1]
        if width is None:
            raise PhotoError(images.paths[span[0]], "no photo in the first batch could be decoded")
        out = torch.zeros(len(span), width)
        if chunk_out is not None:
            out[ok] = chunk_out
        rows.append(out)
        if on_progress is not None:
            on_progress(len(span))
    if not rows:
        return torch.zeros(0, dim or 0)
    return torch.cat(rows)
