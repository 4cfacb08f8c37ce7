"""How a loaded model runs fastest on its device: memory layout, precision, batch size, threads.

None of this changes which network computes a descriptor, only how fast and in how much
memory; every choice here was measured (``benchmarks/bench_runtime.py`` and
``bench_precision.py``; figures in docs/database.md, "How fast, and how much memory"):

* layout: on the CPU, convolutions run faster on channels-last (NHWC) tensors, the layout
  oneDNN's kernels work in (NCHW tensors are reordered at every layer): VGG-16 at 640×480
  1.28 → 1.03 s a photo on 2 cores, EfficientNet-Lite0 at 320 px 13–22 % less time;
* precision: fp32 by default on the CPU (exactly the published network); bf16 runs the network
  1.9–2.3× faster on CPUs with bfloat16 instructions (AVX512-BF16, AMX), at a cost measured on
  lite0-vlad of about 1e-2 in cosine (scores within 9e-3, recall unchanged), not measured on the
  default model's real weights: so never the CPU's default; on CUDA the default is autocast
  (bf16 where the GPU has it, else fp16);
* batch: on the CPU a larger batch is not faster (VGG-16 at 640 px: 1.03 s a photo at batch 1,
  1.05 s at batch 4), only bigger — 16 photos at 640 px held 5 GB — so the batch is what a
  memory budget holds for the image size and the model, never a fixed count;
* threads: torch's threads wait for each other at every layer, so decoding threads and the
  network share the cores by what each costs (:class:`CoreShare`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from geoloc.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from geoloc.models.model import GeolocModel

#: ``--precision`` values; ``auto`` is fp32 on the CPU and MPS, autocast on CUDA.
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
#: Backbones measured faster on channels-last tensors on the CPU (a plug-in's stays as it is).
CHANNELS_LAST_ARCHS = frozenset({"vgg16", "alexnet", "lite0"})
#: Activations one CPU batch may hold at its widest layer (input and output together): enough
#: to batch small images (Lite0 at 224 px: 13 photos), while VGG-16 at 640 px runs one at a time.
CPU_BATCH_BYTES = 128 << 20
#: The most photos in one batch, whatever the memory (a GPU stops gaining long before).
MAX_BATCH = {"cpu": 16, "cuda": 64, "mps": 32}


def cpu_count() -> int:
    """The cores this process may run on (its affinity, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------
# Precision


def check_precision_name(choice: str | None) -> str:
    """``--precision``'s value, lower-cased; a usage error when it is none of :data:`PRECISIONS`
    (no torch: the CLI checks the spelling before anything heavy)."""
    value = (choice or "auto").lower()
    if value not in PRECISIONS:
        raise UsageError(f"unknown precision {choice!r}; choose one of {', '.join(PRECISIONS)}")
    return value


def resolve_precision(choice: str | None, device: torch.device | str) -> str:
    """The precision a run uses: ``fp32``, ``bf16`` or ``fp16``; a usage error for one the device
    cannot run usefully.

    ``auto`` (or None): fp32 on the CPU and MPS; on CUDA bf16 where the GPU has it, else fp16,
    as autocast (the weights stay fp32, matrix products and convolutions run reduced, the
    pooling and whitening run fp32). fp16 on the CPU is refused: CPUs without float16
    arithmetic emulate it (Lite0 at 320 px: 0.42 s a photo against 0.025 s in fp32, measured
    by ``benchmarks/bench_runtime.py``).
    """
    import torch

    kind = torch.device(device).type
    value = check_precision_name(choice)
    if value == "auto":
        if kind == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if value == "fp16" and kind == "cpu":
        raise UsageError("--precision fp16 needs a GPU (the CPU emulates float16, several times "
                         "slower than fp32); use bf16 or fp32 on the CPU")
    if value == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError("--precision bf16: this GPU has no bfloat16; use fp16 or fp32")
    return value


# ---------------------------------------------------------------------------------------------
# Layout and precision on the model


def prepare(model: GeolocModel, device: torch.device | str, precision: str = "fp32") -> GeolocModel:
    """Set ``model`` up to run on ``device`` at ``precision`` (in place; returns it).

    On the CPU, backbones of :data:`CHANNELS_LAST_ARCHS` get channels-last weights and inputs;
    elsewhere the weights go back to the contiguous layout (a model moved from the CPU to a GPU
    keeps the CPU's choice otherwise).
    """
    import torch

    kind = torch.device(device).type
    wanted = kind == "cpu" and getattr(model, "arch", None) in CHANNELS_LAST_ARCHS
    if wanted != getattr(model, "channels_last", False):
        model.backbone.to(memory_format=torch.channels_last if wanted else torch.contiguous_format)
        model.channels_last = wanted
    model.precision = precision
    return model


# ---------------------------------------------------------------------------------------------
# Batch size


def activation_bytes(model: GeolocModel, height: int, width: int) -> int:
    """Bytes the widest layer of the backbone holds for one image of ``height``×``width``
    (its input and output together, float32): measured once with hooks on a small probe
    image, then scaled by the pixel count, so any backbone (a plug-in's too) answers."""
    import torch

    per_pixel = getattr(model, "activation_per_pixel", None)
    if per_pixel is None:
        side = 128
        widest = [0]

        def hook(module, inputs, output):
            if list(module.children()):
                return  # containers: their leaves are measured
            size = sum(t.numel() for t in inputs if isinstance(t, torch.Tensor))
            outputs = output if isinstance(output, (tuple, list)) else (output,)
            size += sum(t.numel() for t in outputs if isinstance(t, torch.Tensor))
            widest[0] = max(widest[0], size)

        try:
            device = next(model.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
        handles = [m.register_forward_hook(hook) for m in model.backbone.modules()]
        try:
            with torch.no_grad():
                model.backbone(torch.zeros(1, 3, side, side, device=device))
        finally:
            for handle in handles:
                handle.remove()
        per_pixel = 4 * widest[0] / (side * side)
        model.activation_per_pixel = per_pixel
    return int(per_pixel * height * width)


def plan_batch(model: GeolocModel, max_side: int, device: torch.device | str,
               precision: str = "fp32", budget: int | None = None) -> int:
    """Photos per network batch: what the memory budget holds at the widest layer for a
    photo of ``max_side`` on both sides (the largest a resized photo can be).

    Budget: on the CPU :data:`CPU_BATCH_BYTES`, at most an eighth of the memory free now; on
    CUDA half the GPU memory free now; on MPS a quarter of the machine's free memory.
    """
    import torch

    from geoloc.photos.decode import memory_bytes

    kind = torch.device(device).type
    if budget is None:
        if kind == "cuda":
            free, _ = torch.cuda.mem_get_info(torch.device(device))
            budget = free // 2
        elif kind == "mps":
            budget = memory_bytes(available=True) // 4
        else:
            budget = min(CPU_BATCH_BYTES, memory_bytes(available=True) // 8)
    per_image = activation_bytes(model, max_side, max_side)
    if precision != "fp32" and kind != "cpu":
        per_image //= 2  # autocast keeps the activations in 16 bits
    batch = int(budget // max(per_image, 1))
    return max(1, min(MAX_BATCH.get(kind, 16), batch))


# ---------------------------------------------------------------------------------------------
# Threads


class CoreShare:
    """How many threads torch gets beside the decoding threads, measured rather than guessed.

    torch's threads meet at a barrier after every layer, so a core taken by a decoding thread
    (or another program) stalls the whole network for as long as the other thread runs there.
    What that costs depends on the network: beside a thread decoding without pause on 2 cores,
    VGG-16 (13 large layers) ran 1.82 s a photo with 2 threads and 1.95 s with 1;
    EfficientNet-Lite0 at 320 px (about a hundred small layers) 0.063 s with 2 and 0.038 s with
    1 (another run: 0.171 and 0.049 s; ``benchmarks/bench_runtime.py``). So:

    * while decoding keeps less than :data:`CHEAP_DECODE` of the network's time busy, the
      network gets every core (there is nothing to give back);
    * otherwise both settings — every core, and the cores the decoding threads leave — are
      measured for :data:`TRIAL_S` of network time each, the faster is kept, and the choice is
      measured again every :data:`REVISIT_S` (other programs come and go).

    The first batch is never measured: it pays for the warm-up (kernels chosen, weights paged
    in). Thread counts change how fast, never what a descriptor is (beyond float rounding).
    """

    TRIAL_S = 1.0
    REVISIT_S = 120.0
    CHEAP_DECODE = 0.05

    def __init__(self, workers: int, cores: int | None = None, limit: int | None = None):
        self.cores = cores or cpu_count()
        self.workers = max(1, int(workers))
        #: The threads torch may use at most (the user's own setting, OMP_NUM_THREADS).
        self.limit = limit or self.cores
        self.threads = self.full
        self._warm = False
        self._round: dict[int, list[float]] = {}  # threads → [photos, network seconds] this round
        self._since = 0.0  # network seconds since the last decision
        self._decided = False

    def set_limit(self, limit: int) -> int:
        """The user's own thread setting caps both choices; the threads to use now."""
        self.limit = max(1, int(limit))
        self.threads = min(self.threads, self.full)
        return self.threads

    @property
    def full(self) -> int:
        return max(1, min(self.limit, self.cores))

    @property
    def reduced(self) -> int:
        return max(1, min(self.limit, self.cores - self.workers))

    def record(self, photos: int, seconds: float, decode_s: float, network_s: float) -> int:
        """After a batch of ``photos`` that took ``seconds`` in the network, with ``decode_s``
        (summed over decoding threads) and ``network_s`` so far: the threads for the next one."""
        if not self._warm:
            self._warm = True
            return self.threads
        if self.full == self.reduced:
            return self.threads
        if not self._round:
            self._since += seconds
            if self._decided and self._since < self.REVISIT_S:
                return self.threads
            if decode_s < self.CHEAP_DECODE * network_s:
                self.threads, self._decided, self._since = self.full, True, 0.0
                return self.threads
            self._round = {self.threads: [0, 0.0]}
            return self.threads
        measured = self._round.setdefault(self.threads, [0, 0.0])
        measured[0] += photos
        measured[1] += seconds
        if measured[1] < self.TRIAL_S:
            return self.threads
        other = self.reduced if self.threads == self.full else self.full
        if other not in self._round or self._round[other][1] < self.TRIAL_S:
            self._round.setdefault(other, [0, 0.0])
            self.threads = other
            return self.threads
        self.threads = min(self._round, key=lambda t: self._round[t][1] / max(self._round[t][0], 1))
        self._round, self._decided, self._since = {}, True, 0.0
        return self.threads
