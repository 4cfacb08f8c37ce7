"""Model figures: speed of each offline model and its retrieval on the Lund street walk.

    python benchmarks/bench_models.py [--max-side 640] [--threads 2]

For each offline model (lite0-vlad, lite0-max, lite0-avg, lite0-gem) it prints the descriptor
size, the forward time per photo on this CPU, and, on the Lund split of ../shared/data
(database: odd frames, queries: even frames), the share of queries whose top-1 database photo
lies within 10 / 15 / 25 m of the query's own EXIF position. lite0-vlad fits its vocabulary on
the database photos, as `geoloc index` does. A registry model whose weights are cached (e.g. after
`geoloc models download netvlad-vgg16-pitts30k`) can be added with --model.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch
from PIL import Image

from geoloc.geo import haversine_m
from geoloc.models import load_model

LUND = Path(__file__).resolve().parents[2] / "shared" / "data" / "lund"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-side", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", action="append", default=None, help="models to run (default: the offline ones)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.model or ["lite0-vlad", "lite0-max", "lite0-avg", "lite0-gem"]

    with open(LUND / "gps_from_exif.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    gps = {r["filename"]: (float(r["lat"]), float(r["lon"])) for r in rows}
    files = sorted(gps)
    db_files = files[0::2]  # 01, 03, … 29
    query_files = files[1::2]  # 02, 04, … 28
    images = {f: Image.open(LUND / "images" / f).convert("RGB") for f in files}

    print(
        f"Lund split: {len(db_files)} database photos, {len(query_files)} queries, max_side {args.max_side}, "
        f"{args.threads} threads"
    )
    print(f"{'model':<26}{'dim':>7}{'ms/photo':>10}{'@10m':>7}{'@15m':>7}{'@25m':>7}")
    for name in names:
        model = load_model(name)
        pre = model.preprocess.replace(max_side=args.max_side)
        tensors = {f: pre.to_tensor(images[f])[None] for f in files}
        with torch.no_grad():
            if model.needs_vocabulary:
                feats = torch.cat(
                    [
                        model.local_features(tensors[f]).permute(0, 2, 3, 1).reshape(-1, model.local_dim)
                        for f in db_files
                    ]
                )
                model.fit_vocabulary(feats)
            start = time.perf_counter()
            desc = {f: model(tensors[f])[0] for f in files}
            per_photo = (time.perf_counter() - start) / len(files) * 1000
        db = torch.stack([desc[f] for f in db_files])
        hits = {10: 0, 15: 0, 25: 0}
        for q in query_files:
            best = db_files[int((db @ desc[q]).argmax())]
            err = haversine_m(*gps[q], *gps[best])
            for t in hits:
                hits[t] += err <= t
        n = len(query_files)
        print(f"{name:<26}{model.dim:>7}{per_photo:>10.0f}" + "".join(f"{hits[t] / n:>7.0%}" for t in (10, 15, 25)))


if __name__ == "__main__":
    main()
