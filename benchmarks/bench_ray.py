"""`geoloc index` throughput: local, and on a local Ray with 1 and 2 workers (actors).

    python benchmarks/bench_ray.py --photos 116 --max-side 320 --model lite0-vlad

The lund photos are copied to the given count; a database with its vocabulary fitted (on the
first 8 photos) is made once and copied for each run, so every run indexes the same photos with
the same model. Reported per run: the whole call's wall time (for Ray, with starting the local
cluster and its actors, which load the model), and the steady rate between the first and the
last batch committed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LUND = ROOT.parent / "shared" / "data" / "lund" / "images"

from geoloc.progress import Progress


class Clock(Progress):
    """When the indexing stage committed its first and its last batch."""

    def __init__(self):
        self.indexing = False
        self.first = self.last = None
        self.done = 0

    def stage(self, name, total=None):
        self.indexing = name == "Indexing"

    def advance(self, n=1):
        if self.indexing and n:
            now = time.perf_counter()
            self.first = self.first or now
            self.last = now
            self.done += n


def main() -> None:
    from geoloc.descriptors.cluster import RayConfig
    from geoloc.indexing.run import IndexConfig, index_photos

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=116)
    parser.add_argument("--max-side", type=int, default=320)
    parser.add_argument("--model", default="lite0-vlad")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--runs", default="local,ray1,ray2")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos = tmp / "photos"
        photos.mkdir()
        sources = sorted(LUND.glob("*.jpg"))
        for i in range(args.photos):
            shutil.copy2(sources[i % len(sources)], photos / f"{i:05d}.jpg")
        base = tmp / "base"
        first = sorted(photos.iterdir())[:8]
        index_photos(first, base, IndexConfig(model=args.model, max_side=args.max_side, vocabulary_photos=8))
        for run in args.runs.split(","):
            db = tmp / run
            shutil.copytree(base, db)
            if run == "local":
                config = IndexConfig(batch_size=args.batch_size)
            else:
                workers = int(run[len("ray"):])
                config = IndexConfig(batch_size=args.batch_size, engine="ray", ray=RayConfig(workers=workers))
            clock = Clock()
            started = time.perf_counter()
            report = index_photos([photos], db, config, clock)
            wall = time.perf_counter() - started
            steady = (clock.done - args.batch_size) / (clock.last - clock.first) if clock.done > args.batch_size else None
            print(json.dumps({"run": run, "photos": report.indexed, "wall_s": round(wall, 1),
                              "photos_per_s_overall": round(report.indexed / wall, 2),
                              "photos_per_s_steady": round(steady, 2) if steady else None,
                              "before_first_batch_s": round(clock.first - started, 1) if clock.first else None}),
                  flush=True)


if __name__ == "__main__":
    main()
