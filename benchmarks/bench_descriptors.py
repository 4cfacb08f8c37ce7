"""Training-free tricks on the global descriptors, each measured without and with re-ranking.

The experiments of the descriptor part of the re-ranking issue (docs/benchmarks.md,
"Descriptor tricks"), on the dev sets of ``bench_accuracy.py`` (same photos, same derived
variants, same eval cache). Each trick changes only the database and/or query descriptors that
the search sees; the search, the re-ranking (stored verification maps) and the estimate are the
library's own (``geoloc.evaluation.runner``), so the figures compare like with like:

- ``qe1`` / ``qe3``: α-query expansion (α = 3): the query plus its top-k database descriptors
  weighted by cosine^α, re-normalised, searched again;
- ``dba``: database-side augmentation: each database descriptor plus its (up to) 2 nearest
  database neighbours that are also within 25 m of it on the ground, weighted by cosine^α;
- ``dba+qe1``: both;
- ``ms-q``: multi-scale query: the mean of the query's descriptors at 480, 640 and 800 px
  (the database stays at its own 640 px); ``ms-both``: the database photos as well;
- ``pcaw``: PCA-whitening fitted on the database's own descriptors (rank at most photos − 1:
  15 photos give at most 14 dimensions, so this is a rank-limited stand-in for the NetVLAD
  paper's whitening fitted on thousands); ``pcaw-half``: eigenvalues^-1/4 (half-way whitening);
- ``s16``: NetVLAD (64 clusters, fitted on the database's cells) on the stride-16 map that the
  database already stores for verification, instead of lite0's stride-32 last stage;
  ``s16+s32``: both descriptors concatenated (multi-scale pooling).

``--model lite0-vlad-s16`` (registered here, for this script only): lite0-vlad with the stride of
its last stride-2 stage removed, so NetVLAD pools a stride-16 map of the same 320 channels
(40×30 cells at 640 px instead of 20×15); its vocabulary is fitted on each dev database as
``geoloc index`` fits lite0-vlad's. Run it with ``--tricks baseline``.

Usage::

    GEOLOC_HOME=... python benchmarks/bench_descriptors.py [--max-side 640] [--model lite0-vlad]
        [--sets lund,dark] [--tricks qe1,dba] [--data DIR]

Prints, per trick, the R@1/R@5 at 25 m and at 10 m and the median error of each set without and
with re-ranking, then a pooled row over all sets (every query counts once).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import SETS, derive, split_for  # noqa: E402

TRICKS = ("baseline", "qe1", "qe3", "dba", "dba+qe1", "ms-q", "ms-both", "pcaw", "pcaw-half", "s16", "s16+s32")
ALPHA = 3.0
SCALES = (480, 800)  # besides the database's own size


S16_MODEL = "lite0-vlad-s16"
#: Lite0's block 11 opens the stride-2 stage 112 → 192 channels (blocks 11–14), the last one.
_LAST_STRIDE_BLOCK = 11


def register_stride16() -> None:
    """lite0-vlad without its last stride, as a registered model (name ``S16_MODEL``)."""
    import dataclasses
    import hashlib

    from geoloc.models.registry import _lite0_model, get_entry, register_model

    def factory(entry):
        model = _lite0_model(entry)
        conv = model.backbone.net._blocks[_LAST_STRIDE_BLOCK]._depthwise_conv
        conv.stride = (1, 1)
        model.weights_hash = hashlib.sha256(f"{model.weights_hash}:stride16".encode()).hexdigest()
        return model

    base = get_entry("lite0-vlad")
    register_model(dataclasses.replace(base, name=S16_MODEL, description="lite0-vlad, last stage at stride 16",
                                       default=False, factory=factory))


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def query_expansion(q: np.ndarray, db: np.ndarray, k: int, alpha: float = ALPHA) -> np.ndarray:
    """α-QE: why it may help is that the top database neighbours carry what the query missed
    (the other half of the street); the weights keep a wrong neighbour's share small."""
    sims = q @ db.T
    out = q.copy()
    for i in range(len(q)):
        top = np.argsort(-sims[i])[:k]
        w = np.clip(sims[i, top], 0, None) ** alpha
        out[i] = q[i] + (w[:, None] * db[top]).sum(axis=0)
    return unit(out)


def augment_database(db: np.ndarray, lat: np.ndarray, lon: np.ndarray, k: int = 2, radius_m: float = 25.0,
                     alpha: float = ALPHA) -> np.ndarray:
    """DBA limited to neighbours near on the ground: a photo's descriptor absorbs views of the
    same place only, never a look-alike elsewhere."""
    from geoloc.geo import haversine_m

    sims = db @ db.T
    out = db.copy()
    for i in range(len(db)):
        near = haversine_m(lat[i], lon[i], lat, lon) <= radius_m
        near[i] = False
        cand = [j for j in np.argsort(-sims[i]) if near[j]][:k]
        if cand:
            w = np.clip(sims[i, cand], 0, None) ** alpha
            out[i] = db[i] + (w[:, None] * db[cand]).sum(axis=0)
    return unit(out)


def pca_whitening(db: np.ndarray, q: np.ndarray, power: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Centre on the database mean, rotate to its principal axes, divide by eigenvalue^power
    (0.5: full whitening). Rank ≤ photos − 1: the other dimensions are dropped."""
    mean = db.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(db - mean, full_matrices=False)
    keep = s > s[0] * 1e-6
    s, vt = s[keep], vt[keep]
    eig = s**2 / max(len(db) - 1, 1)
    proj = vt.T / eig[None, :] ** power
    return unit((db - mean) @ proj), unit((q - mean) @ proj)


def stride16_vlad(database, split_rows_db: list, q_slots, records) -> tuple[np.ndarray, np.ndarray]:
    """NetVLAD on the stored stride-16 verification maps (database) and the queries' maps."""
    import torch

    from geoloc.models.netvlad import NetVLAD
    from geoloc.retrieval.verify import dequantize

    spec = database.maps
    stride = float(spec.stride)
    db_cells = [dequantize(*slot, stride).desc for slot in database.map_slots([r.row for r in records])]
    q_cells = []
    for slot in q_slots:
        decoded = spec.decode(bytes(slot))
        q_cells.append(None if decoded is None else dequantize(*decoded, stride).desc)
    dim = db_cells[0].shape[1]
    layer = NetVLAD(64, dim)
    rng = np.random.default_rng(0)
    sample = np.concatenate([c[rng.permutation(len(c))[:3000]] for c in db_cells])
    torch.manual_seed(0)
    layer.fit(torch.from_numpy(sample), seed=0)

    def pool(cells):
        if cells is None:
            return np.full(layer.out_dim, np.nan, np.float32)
        x = torch.from_numpy(cells.T.copy())[None, :, :, None]
        with torch.no_grad():
            return layer(x)[0].numpy()

    return np.stack([pool(c) for c in db_cells]), np.stack([pool(c) for c in q_cells])


def scaled_descriptors(database, paths: list[Path], sides, cache: Path) -> list[np.ndarray]:
    """Descriptors of ``paths`` with the database's own model and vocabulary at other sizes."""
    from geoloc.descriptors.database_model import load_database_model
    from geoloc.descriptors.extract import Extractor

    model = None
    out = []
    for side in sides:
        file = cache / f"{side}.npy"
        if file.exists():
            out.append(np.load(file))
            continue
        if model is None:
            model = load_database_model(database, "cpu")
        ex = Extractor.create(model, max_side=side, batch_size=8, hash_files=False)
        pos = {os.fspath(p): i for i, p in enumerate(paths)}
        m = np.full((len(paths), database.dim), np.nan, np.float32)
        for items, desc in ex.descriptors(paths):
            for item, row in zip(items, desc):
                m[pos[os.fspath(item.path)]] = row
        cache.mkdir(parents=True, exist_ok=True)
        np.save(file, m)
        out.append(m)
    return out


def score(outcomes) -> dict:
    from geoloc.evaluation.metrics import error_stats, recall_at

    scored = [o for o in outcomes if o.scored]
    dists = [o.truth_distances() for o in scored]
    r25, r10 = recall_at(dists, 25.0, (1, 5)), recall_at(dists, 10.0, (1, 5))
    med = error_stats(o.error_m for o in scored)["median_error_m"]
    return {"r1": r25[1], "r5": r25[5], "r1_10": r10[1], "r5_10": r10[5], "median": med, "n": len(scored)}


def cell(f: dict) -> str:
    med = f["median"] if f["median"] is not None else float("nan")
    return (f"{100*f['r1']:5.1f}/{100*f['r5']:5.1f} {100*f['r1_10']:5.1f}/{100*f['r5_10']:5.1f} {med:6.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-side", type=int, default=640)
    ap.add_argument("--model", default="lite0-vlad")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--tricks", default=",".join(TRICKS))
    ap.add_argument("--data", type=Path, default=None, help="derived photos kept (and reused) here")
    args = ap.parse_args()
    os.environ.setdefault("GEOLOC_HOME", tempfile.mkdtemp(prefix="geoloc-bench-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.model == S16_MODEL:
        register_stride16()
    from geoloc.evaluation import EvalConfig, evaluate_split
    from geoloc.evaluation import runner
    from geoloc.paths import cache_dir

    root = args.data or Path(tempfile.mkdtemp(prefix="geoloc-dev-"))
    if not (root / "zoom").is_dir():
        derive(root)
    tricks = ["baseline"] + [t for t in args.tricks.split(",") if t != "baseline"]
    original = runner._search_and_score
    results: dict[tuple[str, str, bool], tuple[dict, float]] = {}
    pooled: dict[tuple[str, bool], list] = {}

    for name in args.sets.split(","):
        split = split_for(name, root)

        def every_trick(split, split_rows, db_matrix, q_desc, q_errors, threshold, config, reranker=None,
                        q_slots=None, _name=name):
            database = reranker.database
            records = reranker.records
            db = np.ascontiguousarray(db_matrix, dtype=np.float32)
            q = np.nan_to_num(np.asarray(q_desc, dtype=np.float32))
            lat, lon = split.db.lat[split_rows], split.db.lon[split_rows]
            ms_cache = cache_dir() / "bench-descriptors" / f"{_name}-{args.model}-{args.max_side}"
            variants = {}
            for trick in tricks:
                if trick == "baseline":
                    variants[trick] = (db, q)
                elif trick == "qe1":
                    variants[trick] = (db, query_expansion(q, db, 1))
                elif trick == "qe3":
                    variants[trick] = (db, query_expansion(q, db, 3))
                elif trick == "dba":
                    variants[trick] = (augment_database(db, lat, lon), q)
                elif trick == "dba+qe1":
                    adb = augment_database(db, lat, lon)
                    variants[trick] = (adb, query_expansion(q, adb, 1))
                elif trick in ("ms-q", "ms-both"):
                    qs = scaled_descriptors(database, list(split.query_paths), SCALES, ms_cache / "queries")
                    mq = unit(q + sum(np.nan_to_num(m) for m in qs))
                    if trick == "ms-q":
                        variants[trick] = (db, mq)
                    else:
                        ds = scaled_descriptors(database, [Path(r.path) for r in records], SCALES, ms_cache / "db")
                        variants[trick] = (unit(db + sum(np.nan_to_num(m) for m in ds)), mq)
                elif trick == "pcaw":
                    variants[trick] = pca_whitening(db, q, 0.5)
                elif trick == "pcaw-half":
                    variants[trick] = pca_whitening(db, q, 0.25)
                elif trick in ("s16", "s16+s32"):
                    d16, q16 = stride16_vlad(database, split_rows, q_slots, records)
                    if trick == "s16":
                        variants[trick] = (d16, np.nan_to_num(q16))
                    else:
                        variants[trick] = (unit(np.concatenate([db, d16], axis=1)),
                                           unit(np.nan_to_num(np.concatenate([q, q16], axis=1))))
                else:
                    raise SystemExit(f"unknown trick {trick}")
            for trick, (d, qq) in variants.items():
                for rr in (None, reranker):
                    start = time.perf_counter()
                    out = original(split, split_rows, np.ascontiguousarray(d), np.ascontiguousarray(qq), q_errors,
                                   threshold, config, rr, q_slots)
                    seconds = (time.perf_counter() - start) / max(len(out), 1)
                    results[(_name, trick, rr is not None)] = (score(out), seconds)
                    pooled.setdefault((trick, rr is not None), []).extend(out)
            return out

        runner._search_and_score = every_trick
        try:
            evaluate_split(split, EvalConfig(model=args.model, max_side=args.max_side, device="cpu", rerank=True,
                                                   rerank_verifier="dense"))
        finally:
            runner._search_and_score = original
        print(f"[{name} done]", file=sys.stderr, flush=True)

    print(f"model {args.model}, max side {args.max_side}; R@1/R@5 at 25 m, R@1/R@5 at 10 m, median error (m)")
    for trick in tricks:
        print(f"\n{trick}")
        print(f"{'set':10} {'queries':>7}  {'without re-ranking':>32}  {'with re-ranking':>32}  {'s/query':>7}")
        for name in args.sets.split(","):
            (f0, _), (f1, sec) = results[(name, trick, False)], results[(name, trick, True)]
            print(f"{name:10} {f0['n']:7d}  {cell(f0):>32}  {cell(f1):>32}  {sec:7.2f}")
        p0, p1 = score(pooled[(trick, False)]), score(pooled[(trick, True)])
        print(f"{'all':10} {p0['n']:7d}  {cell(p0):>32}  {cell(p1):>32}")


if __name__ == "__main__":
    sys.exit(main())
