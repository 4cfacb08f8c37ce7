"""`--precision bf16` against fp32: network speed, descriptor and score differences, recall.

The lund walk (odd frames the database, even frames the queries, truth their EXIF GPS) is
indexed once at fp32 — the vocabulary of ``lite0-vlad`` is fitted there and kept, so that only
the precision differs — then every photo's descriptor is computed again through the same
extractor at each precision. Printed, per model and precision: the network's seconds a photo
(the extractor's own clock, after one warm-up photo), the cosine between a photo's descriptor
and its fp32 one, the largest difference of a query–candidate score, recall@1/5/10 at 25 m
(cosine nearest neighbours among the database frames), and how many queries change their
top-1; "bf16 queries on the fp32 database" is what `geoloc locate --precision bf16` does on a
database built at fp32.

    python benchmarks/bench_precision.py [--models lite0-vlad,vgg16-random] [--max-side 640]

``vgg16-random`` is the default model's architecture (VGG-16 + NetVLAD + WPCA-4096) with random
weights: its speed is the default model's, but its descriptors of different photos are all
alike, so its recall means nothing (printed for the score differences only).
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LUND = ROOT.parent / "shared" / "data" / "lund"
RECALL_NS = (1, 5, 10)


def truth() -> dict[str, tuple[float, float]]:
    with open(LUND / "gps_from_exif.csv", newline="") as f:
        return {row["filename"]: (float(row["lat"]), float(row["lon"])) for row in csv.DictReader(f)}


def recall(db: np.ndarray, queries: np.ndarray, db_pos: list, q_pos: list, threshold_m: float = 25.0):
    """recall@N of cosine nearest neighbours, and each query's top-1 (database row)."""
    from geoloc.geo import haversine_m

    order = np.argsort(-(queries @ db.T), axis=1)
    hits = {n: 0 for n in RECALL_NS}
    for qi, ranked in enumerate(order):
        near = [haversine_m(*q_pos[qi], *db_pos[j]) <= threshold_m for j in ranked]
        for n in RECALL_NS:
            hits[n] += any(near[:n])
    return {n: 100.0 * hits[n] / len(queries) for n in RECALL_NS}, order[:, 0]


def build_model(name: str):
    from geoloc.models.registry import load_model

    if name == "vgg16-random":
        import torch

        from geoloc.models.model import build_model as build

        torch.manual_seed(0)
        return build("vgg16", "netvlad", whiten_dim=4096, pretrained_backbone=False)
    return load_model(name)


def descriptors(model, paths: list[Path], max_side: int, precision: str) -> tuple[np.ndarray, float]:
    """Descriptors (rows in ``paths`` order) and the network's seconds a photo."""
    from geoloc.descriptors.extract import ExtractConfig, Extractor

    extractor = Extractor(model, ExtractConfig(max_side=max_side, hash_files=False, precision=precision), "cpu")
    list(extractor.descriptors(paths[:1]))  # warm-up: kernels chosen, weights paged in
    extractor.stats.network_s = 0.0
    rows = {}
    for items, desc in extractor.descriptors(paths):
        for item, row in zip(items, desc):
            rows[item.path] = row
    return np.stack([rows[p] for p in paths]), extractor.stats.network_s / len(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="lite0-vlad,vgg16-random")
    parser.add_argument("--max-side", type=int, default=640)
    parser.add_argument("--precisions", default="fp32,bf16")
    args = parser.parse_args()

    import torch

    gps = truth()
    photos = sorted((LUND / "images").glob("*.jpg"))
    db_paths = [p for p in photos if int(p.stem) % 2 == 1]
    q_paths = [p for p in photos if int(p.stem) % 2 == 0]
    db_pos = [gps[p.name] for p in db_paths]
    q_pos = [gps[p.name] for p in q_paths]
    print(f"# lund: {len(db_paths)} database frames, {len(q_paths)} queries, longest side {args.max_side}, "
          f"CPU, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs")
    for name in [m for m in args.models.split(",") if m]:
        model = build_model(name)
        if model.needs_vocabulary:
            from geoloc.descriptors.extract import ExtractConfig, Extractor
            from geoloc.models.vocabulary import FeatureSampler, fit_vocabulary

            ex = Extractor(model, ExtractConfig(max_side=args.max_side, hash_files=False, precision="fp32"), "cpu")
            sampler = FeatureSampler(len(db_paths), max_features=50_000)
            key = 0
            for _, feats in ex.batches(db_paths, model.local_features):
                for one in feats:
                    sampler.add(key, one)
                    key += 1
            fit_vocabulary(model, sampler.sample(), len(db_paths))
        results = {}
        for precision in [p for p in args.precisions.split(",") if p]:
            d, per_photo = descriptors(model, db_paths + q_paths, args.max_side, precision)
            results[precision] = (d[:len(db_paths)], d[len(db_paths):], per_photo)
        ref_db, ref_q, ref_s = results["fp32"]
        _, ref_top = recall(ref_db, ref_q, db_pos, q_pos)
        print(f"\n## {name}")
        print("| precision | network s/photo | speed vs fp32 | min cosine to fp32 | max score diff | "
              "R@1 | R@5 | R@10 | top-1 changed |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        rows = [(p, results[p][0], results[p][1], results[p][2]) for p in results]
        if "bf16" in results:
            rows.append(("bf16 queries on the fp32 database", ref_db, results["bf16"][1], results["bf16"][2]))
        for label, dbd, qd, s in rows:
            both_db = np.concatenate([dbd, qd])
            both_ref = np.concatenate([ref_db, ref_q])
            cos = (both_db * both_ref).sum(1).min()
            score_diff = np.abs(qd @ dbd.T - ref_q @ ref_db.T).max()
            r, top = recall(dbd, qd, db_pos, q_pos)
            print(f"| {label} | {s:.3f} | {ref_s / s:.2f}× | {cos:.5f} | {score_diff:.1e} | "
                  + " | ".join(f"{r[n]:.1f}" for n in RECALL_NS) + f" | {int((top != ref_top).sum())} |")
        del model


if __name__ == "__main__":
    main()
