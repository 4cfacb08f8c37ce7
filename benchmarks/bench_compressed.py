"""Compressed search (IVF-PQ + exact re-scoring) against exact search, at 1e5 and 1e6 × 4096-D.

Three steps, each a command of its own so that none runs for long on a shared machine:

    # 1. Real descriptors: every photo in ../shared/data in 10 views (whole, 4 corner and a
    #    centre crop of 85 %, each mirrored), through lite0-vlad (fitted on them), projected to
    #    4096-D by a fixed random orthonormal matrix and L2-normalised.
    python benchmarks/bench_compressed.py real --out real.npz
    # 2. A database file: half perturbed copies of real views (cosine ~0.95 with them), half
    #    clustered synthetic descriptors (centres mixed from real views), written memory-mapped.
    python benchmarks/bench_compressed.py make --real real.npz --n 1000000 --out db1m.f32
    # 3. Exact top-1 (streamed over the file), then the compressed index: build time, RAM, query
    #    latency one query at a time (as `geoloc locate` asks), top-1 agreement with exact. At 1e6,
#    in three shorter commands: --truth-only, then --build-only, then the queries (each step's
#    result is kept beside the data file and reused by the next).
    python benchmarks/bench_compressed.py run --real real.npz --data db1m.f32 --nprobe 8,16,32 --shortlist 128,256,512

Queries: "real" are views held out of the database (views 8 and 9 of each photo: their
neighbours are perturbed copies of the other views of the same photo), "derived" are database
rows perturbed again. Agreement is the fraction of queries whose top-1 row is the exact one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
DIM = 4096
VIEWS = 10
QUERY_VIEWS = (8, 9)


def _views(image):
    from PIL import ImageOps

    w, h = image.size
    cw, ch = int(w * 0.85), int(h * 0.85)
    crops = [image, image.crop((0, 0, cw, ch)), image.crop((w - cw, 0, w, ch)),
             image.crop((0, h - ch, cw, h)), image.crop((w - cw, h - ch, w, h)),
             image.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))]
    out = crops + [ImageOps.mirror(c) for c in crops]
    return out[:VIEWS]


def cmd_real(args) -> None:
    from geoloc.database import Database
    from geoloc.indexing.run import IndexConfig, index_photos
    from geoloc.photos import discover, load_image

    started = time.perf_counter()
    photos = [p for p in discover([DATA], lambda e: None)]
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        views = Path(tmp) / "views"
        views.mkdir()
        kept = 0
        for i, path in enumerate(photos):
            try:
                image = load_image(path, 640).convert("RGB")
            except Exception:
                continue
            if min(image.size) < 64:
                continue
            for v, view in enumerate(_views(image)):
                view.save(views / f"{kept:04d}_{v}.jpg", quality=92)
            kept += 1
        report = index_photos([views], Path(tmp) / "db", IndexConfig(model="lite0-vlad", max_side=args.max_side))
        with Database.open(Path(tmp) / "db") as database:
            records, matrix = database.descriptor_matrix(located_only=False)
            names = [r.path.stem for r in records]
            raw = np.asarray(matrix, dtype=np.float32)
    photo = np.array([int(n.split("_")[0]) for n in names])
    view = np.array([int(n.split("_")[1]) for n in names])
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((raw.shape[1], DIM)).astype(np.float32))
    proj = raw @ q
    proj /= np.linalg.norm(proj, axis=1, keepdims=True)
    np.savez(args.out, desc=proj.astype(np.float32), photo=photo, view=view)
    print(json.dumps({"photos": kept, "views": len(names), "errors": report.errors, "source_dim": raw.shape[1],
                      "dim": DIM, "seconds": round(time.perf_counter() - started, 1)}))


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _noise(rng, n: int, scale: float) -> np.ndarray:
    g = rng.standard_normal((n, DIM), dtype=np.float32)
    return g * (scale / np.linalg.norm(g, axis=1, keepdims=True))


def cmd_make(args) -> None:
    """Half perturbed real views, half clusters around centres mixed from real views."""
    started = time.perf_counter()
    real = np.load(args.real)
    bases = real["desc"][~np.isin(real["view"], QUERY_VIEWS)]
    rng = np.random.default_rng(args.seed)
    out = np.lib.format.open_memmap if args.out.endswith(".npy") else None
    assert out is None, "write a raw .f32 file"
    data = np.memmap(args.out, dtype=np.float32, mode="w+", shape=(args.n, DIM))
    n_real = args.n // 2
    centres_n = max(1, (args.n - n_real) // 100)
    mix = rng.integers(0, len(bases), (centres_n, 3))
    centres = _normalise(bases[mix].sum(axis=1) + _noise(rng, centres_n, 0.8))
    chunk = 20000
    for start in range(0, args.n, chunk):
        stop = min(args.n, start + chunk)
        n = stop - start
        is_real = np.arange(start, stop) < n_real
        src = np.where(is_real[:, None], bases[rng.integers(0, len(bases), n)], centres[rng.integers(0, centres_n, n)])
        scale = np.where(is_real, args.noise, args.cluster_noise)[:, None].astype(np.float32)
        data[start:stop] = _normalise(src + _noise(rng, n, 1.0) * scale)
    perm_note = "rows in the order written: real-derived first"
    data.flush()
    print(json.dumps({"rows": args.n, "real_derived": n_real, "centres": centres_n, "noise": args.noise,
                      "cluster_noise": args.cluster_noise, "file_gb": round(args.n * DIM * 4 / 1e9, 2),
                      "note": perm_note, "seconds": round(time.perf_counter() - started, 1)}))


def _queries(args, data: np.ndarray) -> dict[str, np.ndarray]:
    real = np.load(args.real)
    rng = np.random.default_rng(args.seed + 1)
    derived_rows = np.sort(rng.choice(len(data), args.derived_queries, replace=False))
    derived = _normalise(np.asarray(data[derived_rows]) + _noise(rng, len(derived_rows), args.noise))
    return {"real": real["desc"][np.isin(real["view"], QUERY_VIEWS)], "derived": derived}


def exact_top1(data: np.ndarray, queries: np.ndarray, chunk: int = 32768) -> tuple[np.ndarray, float]:
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    arg = np.full(len(queries), -1, dtype=np.int64)
    started = time.perf_counter()
    for start in range(0, len(data), chunk):
        scores = np.asarray(data[start:start + chunk]) @ queries.T
        top = scores.argmax(axis=0)
        val = scores[top, np.arange(len(queries))]
        better = val > best
        best[better], arg[better] = val[better], top[better] + start
    return arg, time.perf_counter() - started


def _rss_mib() -> float:
    """Peak RSS; it counts the pages of the memory-mapped file read so far (reclaimable)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _anon_mib() -> float:
    """What the process holds that is not a file's pages (the index, arrays): RssAnon."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cmd_run(args) -> None:
    import faiss

    from geoloc.retrieval.compressed import CompressedConfig, CompressedSearch, add_rows, train

    rows = os.path.getsize(args.data) // (4 * DIM)
    data = np.memmap(args.data, dtype=np.float32, mode="r", shape=(rows, DIM))
    queries = _queries(args, data)
    out: dict = {"rows": rows, "raw_gb": round(rows * DIM * 4 / 1e9, 2), "threads": faiss.omp_get_max_threads()}
    truth = {}
    cache = Path(args.data + ".truth.npz")
    if cache.is_file():  # computed by an earlier run over the same file and queries
        truth = dict(np.load(cache))
    else:
        for name, q in queries.items():
            truth[name], seconds = exact_top1(data, q)
            out[f"exact_{name}_s_per_query_batched"] = round(seconds / len(q), 4)
        np.savez(cache, **{k: v for k, v in truth.items()})
    if args.truth_only:
        print(json.dumps(out))
        return
    one = queries["real"][:1]
    started = time.perf_counter()
    faiss.omp_set_num_threads(1)
    faiss.knn(one, data if rows <= args.exact_single_max else data[:args.exact_single_max], 10,
              metric=faiss.METRIC_INNER_PRODUCT)
    faiss.omp_set_num_threads(out["threads"])
    out["exact_single_query_s"] = round((time.perf_counter() - started) * rows / min(rows, args.exact_single_max), 3)
    out["exact_single_query_note"] = ("measured" if rows <= args.exact_single_max
                                      else f"measured on {args.exact_single_max} rows, scaled")

    for code_bytes in args.code_bytes:
        config = CompressedConfig(threshold=0, code_bytes=code_bytes, opq=args.opq,
                                  cells_per_sqrt_n=args.cells_per_sqrt_n)
        rss0, anon0 = _rss_mib(), _anon_mib()
        saved = Path(f"{args.data}.{config.code_size(DIM)}{'opq' if args.opq else ''}.faiss")
        started = time.perf_counter()
        if saved.is_file():  # built by an earlier `run --build-only`, whose output has the times
            index = faiss.read_index(str(saved))
            trained = built = started
        else:
            index = train(data, np.arange(rows), config)
            trained = time.perf_counter()
            add_rows(index, data, 0, rows)
            built = time.perf_counter()
            faiss.write_index(index, str(saved))
        search = CompressedSearch(index, data, np.arange(rows), config)
        result = {"code_bytes": config.code_size(DIM), "opq": args.opq, "nlist": search.nlist,
                  "train_vectors": config.training_size(rows), "train_s": round(trained - started, 1),
                  "add_s": round(built - trained, 1), "index_mb": round(search.memory_bytes() / 2**20, 1),
                  "raw_over_index": round(rows * DIM * 4 / search.memory_bytes(), 1),
                  "peak_rss_mib_during_build": round(_rss_mib() - rss0, 0),
                  "anon_mib_after_load_or_build": round(_anon_mib() - anon0, 0), "runs": []}
        if args.build_only:
            print(json.dumps(result), flush=True)
            continue
        for nprobe in args.nprobe:
            for shortlist in args.shortlist:
                config.nprobe, config.shortlist = nprobe, shortlist
                run = {"nprobe": nprobe, "shortlist": shortlist}
                for name, q in queries.items():
                    got = np.empty(len(q), dtype=np.int64)
                    got_score = np.empty(len(q), dtype=np.float32)
                    times = []
                    for i in range(len(q)):  # one query at a time, as geoloc locate asks
                        t = time.perf_counter()
                        scores, ids = search.search(q[i:i + 1], 1)
                        times.append(time.perf_counter() - t)
                        got[i], got_score[i] = ids[0, 0], scores[0, 0]
                    run[f"{name}_agree_top1"] = round(float((got == truth[name]).mean()), 4)
                    # Where the top-1 differs, how much lower its (exact) score is than the exact
                    # top-1's: near-duplicates of one view differ by their perturbation only.
                    best = np.einsum("ij,ij->i", np.asarray(data[truth[name]]), q)
                    run[f"{name}_score_gap_max"] = round(float(np.max(best - got_score)), 5)
                    run[f"{name}_ms_median"] = round(1000 * float(np.median(times)), 2)
                    run[f"{name}_ms_p95"] = round(1000 * float(np.quantile(times, 0.95)), 2)
                run["anon_mib"] = round(_anon_mib() - anon0, 0)
                result["runs"].append(run)
                print(json.dumps({"code_bytes": result["code_bytes"], **run}), flush=True)
        out.setdefault("compressed", []).append(result)
        del search, index
    out["queries"] = {k: len(v) for k, v in queries.items()}
    print(json.dumps(out, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("real")
    p.add_argument("--out", required=True)
    p.add_argument("--max-side", type=int, default=320)
    p.add_argument("--tmp", default=None)
    p = sub.add_parser("make")
    p.add_argument("--real", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--noise", type=float, default=0.3, help="perturbation norm of a real-derived row")
    p.add_argument("--cluster-noise", type=float, default=0.6, help="spread of a synthetic cluster")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("run")
    p.add_argument("--real", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--code-bytes", type=lambda s: [int(x) for x in s.split(",")], default=[512])
    p.add_argument("--cells-per-sqrt-n", type=float, default=1.0)
    p.add_argument("--opq", action="store_true")
    p.add_argument("--nprobe", type=lambda s: [int(x) for x in s.split(",")], default=[16])
    p.add_argument("--shortlist", type=lambda s: [int(x) for x in s.split(",")], default=[256])
    p.add_argument("--derived-queries", type=int, default=500)
    p.add_argument("--noise", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exact-single-max", type=int, default=200_000)
    p.add_argument("--truth-only", action="store_true", help="only the exact top-1 (cached beside the data)")
    p.add_argument("--build-only", action="store_true", help="only build the index (saved beside the data)")
    args = parser.parse_args()
    {"real": cmd_real, "make": cmd_make, "run": cmd_run}[args.cmd](args)


if __name__ == "__main__":
    main()
