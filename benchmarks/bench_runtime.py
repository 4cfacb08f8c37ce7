"""The measurements behind geoloc/models/runtime.py's choices, side by side in one process.

Each pair is measured alternately (A B A B …) and the best of each kept, so a drift in the
machine's load falls on both alike:

- layout: NCHW against channels-last, per backbone (VGG-16 at 640×480, Lite0 at 320×240);
- batch: VGG-16 at 640×480, seconds a photo at batch 1 and at batch 4;
- whitening: the 4096×32768 WPCA as a 1×1 convolution and as a matrix product;
- threads: every core against the cores a decoding thread leaves, with one thread decoding lund
  photos all the while (what `geoloc index` runs beside the network), per backbone;
- precision: fp32, bf16 and fp16 autocast on the CPU, per backbone (why fp16 is refused there);
- the batch :func:`runtime.plan_batch` picks for each backbone and size.

    python benchmarks/bench_runtime.py [--reps 3]

Random weights: speed does not depend on the values.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LUND = ROOT.parent / "shared" / "data" / "lund" / "images"


def best_of(fns: dict, reps: int) -> dict:
    """Seconds of each callable, alternately, best of ``reps`` (after one warm-up each)."""
    for fn in fns.values():
        fn()
    times = {k: float("inf") for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k] = min(times[k], time.perf_counter() - start)
    return times


def backbone(arch: str, channels_last: bool):
    import torch

    from geoloc.models.model import build_model

    torch.manual_seed(0)
    model = build_model(arch, "netvlad", pretrained_backbone=False).eval()
    if channels_last:
        model.backbone.to(memory_format=torch.channels_last)
    return model.backbone


def run(net, x, channels_last: bool):
    import torch

    def go():
        with torch.inference_mode():
            net(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    return go


class Decoding:
    """One thread decoding lund photos at 640 px in a loop, as the indexer's decoding thread."""

    def __init__(self):
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        from geoloc.models.preprocess import IMAGENET
        from geoloc.photos import load_image

        paths = sorted(LUND.glob("*.jpg"))
        pre = IMAGENET.replace(max_side=640)
        i = 0
        while not self.stop.is_set():
            pre.to_tensor(load_image(paths[i % len(paths)], 640))
            i += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from geoloc.models import runtime

    cores = runtime.cpu_count()
    threads = torch.get_num_threads()
    print(f"# {cores} CPUs, torch {torch.__version__}, {threads} torch threads, best of {args.reps}, alternating")
    sizes = {"vgg16": (480, 640), "lite0": (240, 320)}

    print("\n## layout (seconds a photo, batch 1)")
    for arch, (h, w) in sizes.items():
        x = torch.randn(1, 3, h, w)
        nchw, nhwc = backbone(arch, False), backbone(arch, True)
        t = best_of({"NCHW": run(nchw, x, False), "channels-last": run(nhwc, x, True)}, args.reps)
        print(f"{arch} {w}×{h}: NCHW {t['NCHW']:.3f} s, channels-last {t['channels-last']:.3f} s "
              f"({100 * (1 - t['channels-last'] / t['NCHW']):.0f} % less)")

    print("\n## batch (VGG-16 640×480, channels-last, seconds a photo)")
    net = backbone("vgg16", True)
    one, four = torch.randn(1, 3, 480, 640), torch.randn(4, 3, 480, 640)
    t = best_of({"1": run(net, one, True), "4": run(net, four, True)}, args.reps)
    print(f"batch 1: {t['1']:.3f} s, batch 4: {t['4'] / 4:.3f} s a photo")

    print("\n## whitening 32768 → 4096 (seconds a photo)")
    conv = torch.nn.Conv2d(32768, 4096, 1)
    v = torch.randn(1, 32768)
    with torch.inference_mode():
        t = best_of({"conv": lambda: conv(v[:, :, None, None]),
                     "product": lambda: F.linear(v, conv.weight.flatten(1), conv.bias)}, args.reps)
    print(f"as a 1×1 convolution {t['conv']:.3f} s, as a matrix product {t['product']:.3f} s")
    conv = None  # 512 MiB: not kept for the rest

    print(f"\n## threads beside one decoding thread (seconds a photo; {cores} cores)")
    share = runtime.CoreShare(workers=1, cores=cores, limit=threads)
    if share.full == share.reduced:
        print("one choice only on this machine")
    for arch, (h, w) in sizes.items():
        x = torch.randn(1, 3, h, w)
        net = backbone(arch, True)
        go = run(net, x, True)

        def at(n, go=go):
            def f():
                torch.set_num_threads(n)
                go()
            return f
        with Decoding():
            t = best_of({share.full: at(share.full), share.reduced: at(share.reduced)}, args.reps)
        torch.set_num_threads(threads)
        print(f"{arch} {w}×{h}: {share.full} torch threads {t[share.full]:.3f} s, "
              f"{share.reduced} {t[share.reduced]:.3f} s")

    print("\n## precision on the CPU (autocast, channels-last, seconds a photo)")
    for arch, (h, w) in sizes.items():
        x = torch.randn(1, 3, h, w)
        net = backbone(arch, True)
        go = run(net, x, True)

        def under(precision, go=go):
            def f():
                with runtime.autocast("cpu", precision):
                    go()
            return f
        # fp16 on VGG-16 would take minutes where it is emulated: Lite0 shows it.
        precisions = ("fp32", "bf16", "fp16") if arch == "lite0" else ("fp32", "bf16")
        t = best_of({p: under(p) for p in precisions}, args.reps)
        print(f"{arch} {w}×{h}: " + ", ".join(f"{p} {t[p]:.3f} s" for p in t))

    print("\n## planned batch (runtime.plan_batch, CPU)")
    from geoloc.models.model import build_model

    for arch in ("vgg16", "alexnet", "lite0"):
        with torch.device("meta"):
            model = build_model(arch, "netvlad", pretrained_backbone=False)
        plans = ", ".join(f"{side} px: {runtime.plan_batch(model, side, 'cpu')}" for side in (224, 320, 640))
        print(f"{arch}: {plans}")
    print(f"# load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
