"""How fast `geoloc locate` answers, and how accurate its estimate is on the Lund walk.

    python benchmarks/bench_locate.py latency   # model load, descriptor, search: 1 query, a batch
    python benchmarks/bench_locate.py search    # synthetic databases of 10k, 100k, 1M descriptors
    python benchmarks/bench_locate.py accuracy  # top-1 vs estimate on lund (odd indexed, even located)
    python benchmarks/bench_locate.py all

Everything is printed; nothing is written outside a temporary folder (and GEOLOC_HOME's cache).
The numbers in docs/commands/locate.md and docs/estimate.md come from this script.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LUND = ROOT.parent / "shared" / "data" / "lund" / "images"


def _lund_split(tmp: Path) -> tuple[Path, Path]:
    odd, even = tmp / "odd", tmp / "even"
    odd.mkdir()
    even.mkdir()
    for i in range(1, 30):
        src = LUND / f"{i:02d}.jpg"
        os.symlink(src, (odd if i % 2 else even) / src.name)
    return odd, even


def _build_db(tmp: Path, model: str, max_side: int | None, device: str) -> tuple[Path, Path, float]:
    from geoloc.indexing.run import IndexConfig, index_photos

    odd, even = _lund_split(tmp)
    start = time.perf_counter()
    report = index_photos([odd], tmp / "db", IndexConfig(model=model, max_side=max_side, device=device))
    if report.located != 15:
        sys.exit(f"indexing the odd Lund frames failed: {report.to_json()}")
    return tmp / "db", even, time.perf_counter() - start


# ------------------------------------------------------------------------------------------------


def bench_latency(args) -> None:
    from geoloc.locating.locator import LocateConfig, Locator
    from geoloc.retrieval.rerank import RerankConfig

    with tempfile.TemporaryDirectory() as tmp:
        db, even, index_s = _build_db(Path(tmp), args.model, args.max_side, args.device)
        queries = sorted(even.glob("*.jpg"))
        print(f"\n## Query latency — {args.model}, max_side {args.max_side or 'model default'}, "
              f"device {args.device}, torch threads {_threads()}")
        print(f"(database: 15 Lund photos, indexed in {index_s:.1f} s)\n")
        print("| run | open db + index | model load | descriptors | search | estimate | total | per query |")
        print("|---|---|---|---|---|---|---|---|")
        for label, batch in (("1 query", queries[:1]), (f"batch of {len(queries)}", queries)):
            start = time.perf_counter()
            with Locator(db, LocateConfig(device=args.device, rerank=RerankConfig(verifier="dense"))) as locator:
                results = locator.locate(batch)
                t = locator.timings
            total = time.perf_counter() - start
            assert all(r.estimate for r in results)
            opened = (t.open_s + t.index_s) * 1e3
            print(f"| {label} | {opened:.0f} ms | {t.model_load_s:.2f} s | {t.descriptor_s:.2f} s "
                  f"| {t.search_s * 1e3:.1f} ms | {t.estimate_s * 1e3:.1f} ms | {total:.2f} s "
                  f"| {total / len(batch):.2f} s |")
        # What a user waits for: a fresh process, imports included.
        import subprocess

        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        cmd = [sys.executable, "-m", "geoloc", "locate", str(queries[0]), "--db", str(db),
               "--device", args.device, "--json", "--verifier", "dense"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        print(f"\n`geoloc locate` one query, fresh process (imports included): "
              f"{time.perf_counter() - start:.2f} s")


# ------------------------------------------------------------------------------------------------


def _synthetic(n: int, dim: int, rng: np.random.Generator, places: int = 2000) -> np.ndarray:
    """Unit vectors around ``places`` centres: like photos of many places, several per place."""
    out = np.empty((n, dim), dtype=np.float32)
    centres = rng.standard_normal((places, dim), dtype=np.float32)
    chunk = 65536
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        noise = rng.standard_normal((e - s, dim), dtype=np.float32)
        x = centres[rng.integers(0, places, e - s)] + 0.8 * noise
        out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def bench_search(args) -> None:
    from geoloc.retrieval.search import SearchConfig, SearchIndex

    rng = np.random.default_rng(0)
    print(f"\n## Search on synthetic databases (faiss {_faiss_version()}, {_omp()} threads)\n")
    print("| N | dim | index | build | 1 query | batch of 100 (per query) | recall@1 vs exact | memory |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        for dim in args.dims:
            gb = n * dim * 4 / 1e9
            if gb > args.max_gb:
                print(f"| {n:,} | {dim} | skipped: {gb:.1f} GB > --max-gb {args.max_gb} | | | | | |")
                continue
            db = _synthetic(n, dim, rng)
            # Queries: noisy copies of database vectors, so exact search has a known answer.
            rows = rng.choice(n, 100, replace=False)
            q = db[rows] + 0.3 * rng.standard_normal((100, dim), dtype=np.float32) / np.sqrt(dim)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            exact = SearchIndex(db, SearchConfig(ivf_threshold=n + 1))
            _, exact_ids = exact.search(q, 1)
            kinds = ["flat"] + (["ivf"] if n >= SearchConfig().ivf_threshold else [])
            for kind in kinds:
                cfg = SearchConfig() if kind == "ivf" else SearchConfig(ivf_threshold=n + 1)
                start = time.perf_counter()
                index = SearchIndex(db, cfg)
                build = time.perf_counter() - start
                one = _median_time(lambda: index.search(q[:1], 10), repeat=5)
                start = time.perf_counter()
                _, ids = index.search(q, 10)
                batch = (time.perf_counter() - start) / len(q)
                recall = float(np.mean(ids[:, 0] == exact_ids[:, 0]))
                label = f"IVF {index.nlist} cells, nprobe {min(cfg.nprobe, index.nlist)}" if kind == "ivf" else "exact"
                print(f"| {n:,} | {dim} | {label} | {build:.2f} s | {one * 1e3:.1f} ms | {batch * 1e3:.2f} ms "
                      f"| {recall:.2f} | {gb:.2f} GB |")
            del db


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------------


def bench_accuracy(args) -> None:
    from geoloc.geo import haversine_m
    from geoloc.locating.estimate import EstimateConfig, estimate_position
    from geoloc.locating.locator import LocateConfig, Locator
    from geoloc.retrieval.rerank import RerankConfig

    with tempfile.TemporaryDirectory() as tmp:
        db, even, _ = _build_db(Path(tmp), args.model, args.max_side, args.device)
        queries = sorted(even.glob("*.jpg"))
        with Locator(db, LocateConfig(device=args.device, top_k=10, rerank=RerankConfig(verifier="dense"))) as locator:
            results = locator.locate(queries)
    assert all(r.estimate and r.query_gps for r in results)
    truth = [r.query_gps for r in results]

    def stats(errors) -> str:
        e = np.asarray(errors)
        return (f"{np.median(e):.1f} | {np.mean(e):.1f} | {np.mean(e <= 10):.0%} | {np.mean(e <= 15):.0%} "
                f"| {np.mean(e <= 25):.0%}")

    top1 = [r.top1_error_m for r in results]
    est = [r.error_m for r in results]
    covered = np.mean([r.error_m <= r.estimate.radius_m for r in results])
    print(f"\n## Lund: odd frames indexed, even frames located — {args.model}, "
          f"max_side {args.max_side or 'model default'} ({len(results)} queries)\n")
    print("| method | median error (m) | mean error (m) | ≤ 10 m | ≤ 15 m | ≤ 25 m |")
    print("|---|---|---|---|---|---|")
    print(f"| top-1 | {stats(top1)} |")
    print(f"| estimate (defaults) | {stats(est)} |")
    print(f"\nTrue position inside the uncertainty circle: {covered:.0%} of queries; "
          f"median radius {np.median([r.estimate.radius_m for r in results]):.1f} m.")

    # Sensitivity: the same candidates, other settings.
    print("\n| temperature | group radius | median (m) | mean (m) | ≤ 10 m | ≤ 15 m | ≤ 25 m | inside circle |")
    print("|---|---|---|---|---|---|---|---|")
    for temperature in (0.01, 0.02, 0.05, 0.1, 1.0):
        for radius in (15.0, 25.0, 50.0):
            cfg = EstimateConfig(temperature=temperature, group_radius_m=radius)
            errs, inside = [], []
            for r, gps in zip(results, truth):
                c = r.candidates
                e = estimate_position([x.lat for x in c], [x.lon for x in c], [x.score for x in c], cfg)
                err = haversine_m(e.lat, e.lon, *gps)
                errs.append(err)
                inside.append(err <= e.radius_m)
            print(f"| {temperature} | {radius:.0f} m | {stats(errs)} | {np.mean(inside):.0%} |")


# ------------------------------------------------------------------------------------------------


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _faiss_version() -> str:
    import faiss

    return getattr(faiss, "__version__", "?")


def _omp() -> int:
    import faiss

    return faiss.omp_get_max_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["latency", "search", "accuracy", "all"], nargs="?", default="all")
    parser.add_argument("--model", default="lite0-vlad")
    parser.add_argument("--max-side", type=int, default=None, help="default: the model's own")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", type=lambda s: [int(float(x)) for x in s.split(",")],
                        default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dims", type=lambda s: [int(x) for x in s.split(",")], default=[128, 4096])
    parser.add_argument("--max-gb", type=float, default=4.0, help="skip synthetic databases larger than this")
    args = parser.parse_args()

    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    os.environ.setdefault("GEOLOC_HOME", tempfile.mkdtemp(prefix="geoloc-bench-"))
    if args.what in ("latency", "all"):
        bench_latency(args)
    if args.what in ("accuracy", "all"):
        bench_accuracy(args)
    if args.what in ("search", "all"):
        bench_search(args)


if __name__ == "__main__":
    main()
