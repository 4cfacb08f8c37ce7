"""What `geoloc finetune` costs and what it achieves, on the CPU you run it on.

1. Training: lite0-vlad fine-tuned on the Lund walk (29 photos) with the paper's recipe;
   prints every epoch (mean loss of the trained tuples, the exact triplet objective over all
   training queries, validation recall@1/5/10 at 25 m on the held-out area, seconds) and where
   the time went (decoding, vocabulary, descriptor passes, training steps).
2. Streaming PCA: whitening fitted on N synthetic D-dimensional descriptors in a memory-mapped
   file, by the exact Gram route and by randomized subspace iteration, each in a fresh process
   so its peak memory can be read: it should stay far below N·D·8 bytes (the matrix in float64)
   and D²·8 (the covariance).

    python benchmarks/bench_finetune.py [--epochs 3] [--max-side 224] [--negatives 10]
        [--device auto] [--pca-n 2000] [--pca-d 32768] [--pca-dim 256] [--skip-train] [--skip-pca]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LUND = ROOT.parent / "shared" / "data" / "lund" / "images"


def bench_training(args) -> None:
    from geoloc.training.data import photos_from_paths
    from geoloc.training.finetune import FinetuneConfig, finetune
    from geoloc.progress import Progress

    class Timing(Progress):
        def __init__(self):
            self.seconds = defaultdict(float)
            self.counts = defaultdict(int)
            self._phase = None
            self._t = 0.0

        def stage(self, description, total):
            self.end_stage()
            self._phase = "training steps" if description.startswith("epoch") else description
            self._t = time.perf_counter()
            self.counts[self._phase] += 1

        def end_stage(self):
            if self._phase is not None:
                self.seconds[self._phase] += time.perf_counter() - self._t
                self._phase = None

        def message(self, text):
            print(text, flush=True)

    photos, _ = photos_from_paths([LUND], print)
    config = FinetuneConfig(base="lite0-vlad", epochs=args.epochs, max_side=args.max_side,
                            n_neg=args.negatives, device=args.device)
    timing = Timing()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("GEOLOC_HOME", str(Path(tmp) / "home"))
        t0 = time.perf_counter()
        result = finetune(photos, Path(tmp) / "lund.safetensors", config, reporter=timing)
        total = time.perf_counter() - t0
    print(f"\n{len(photos)} photos ({result.train_photos} train, {result.val_photos} held out), "
          f"{result.queries} training queries, device {result.device}, max_side {args.max_side}")
    for phase, seconds in sorted(timing.seconds.items(), key=lambda kv: -kv[1]):
        print(f"  {phase:34s} {seconds:7.1f} s  ({timing.counts[phase]}×)")
    trained = sum(h["trained"] for h in result.history)
    steps = timing.seconds.get("training steps", 0.0)
    if trained:
        print(f"  training: {steps / trained:.2f} s per trained tuple (1 query + 1 positive + "
              f"{args.negatives} negatives, forward and backward)")
    print(f"  total {total:.1f} s; objective {result.history[0]['objective']:.4f} → "
          f"{result.history[-1]['objective']:.4f}")


PCA_CHILD = r"""
import json, sys, time
import numpy as np
from geoloc.training.pca import fit_pca_whitening

def hwm_mib():  # peak resident memory of this process (ru_maxrss would count the parent's)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")

path, n, d, dim, method = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
before = hwm_mib()
x = np.memmap(path, dtype=np.float32, mode="r", shape=(n, d))
t = time.perf_counter()
pca = fit_pca_whitening(x, dim, method=method)
seconds = time.perf_counter() - t
peak = hwm_mib()
y = pca.transform(np.asarray(x[:500]), normalize=False)
print(json.dumps({"method": method, "seconds": seconds, "peak_mib": peak, "start_mib": before,
                  "whitened_var_first": float(y[:, 0].var()), "eig0": float(pca.eigenvalues[0])}))
"""


def bench_pca(args) -> None:
    import numpy as np

    n, d, dim = args.pca_n, args.pca_d, args.pca_dim
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.f32"
        x = np.memmap(path, dtype=np.float32, mode="w+", shape=(n, d))
        rng = np.random.default_rng(0)
        basis = rng.standard_normal((64, d)).astype(np.float32)
        for a in range(0, n, 256):
            b = min(n, a + 256)
            z = rng.standard_normal((b - a, 64)).astype(np.float32) * np.linspace(5, 0.5, 64, dtype=np.float32)
            rows = z @ basis + 0.05 * rng.standard_normal((b - a, d)).astype(np.float32)
            x[a:b] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        x.flush()
        del x
        print(f"\nPCA whitening {d} → {dim} on {n} descriptors ({n * d * 4 / 2**20:.0f} MiB on disk; "
              f"in memory as float64 that would be {n * d * 8 / 2**20:.0f} MiB, the covariance "
              f"{d * d * 8 / 2**30:.1f} GiB)")
        for method in ("gram", "randomized"):
            out = subprocess.run([sys.executable, "-c", PCA_CHILD, str(path), str(n), str(d), str(dim), method],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout)
            print(f"  {method:10s} {r['seconds']:7.1f} s   peak RSS {r['peak_mib']:6.0f} MiB "
                  f"(process start {r['start_mib']:.0f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-side", type=int, default=224)
    parser.add_argument("--negatives", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--pca-n", type=int, default=2000)
    parser.add_argument("--pca-d", type=int, default=32768)
    parser.add_argument("--pca-dim", type=int, default=256)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-pca", action="store_true")
    args = parser.parse_args()
    if not args.skip_train:
        bench_training(args)
    if not args.skip_pca:
        bench_pca(args)


if __name__ == "__main__":
    main()
