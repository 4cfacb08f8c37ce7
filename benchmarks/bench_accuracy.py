"""Accuracy with and without re-ranking, on the real photos and on hard variants of them.

The dev benchmark of the re-ranking issue (docs/benchmarks.md, "Re-ranking"). Every set is
built from the photos in ../shared/data, deterministically:

- ``lund``: odd frames are the database, even frames the queries (correct: within 25 m; the
  stricter 10 m shows ranking quality, frames being ~6.6 m apart);
- ``left60`` / ``right60``: the left or right 60 % of each query (a partial view);
- ``opposite``: queries' left 60 % against a database of the right 60 % (a viewpoint shift);
- ``dark``: night-like (exposure ×0.25, gamma 2.2, noise σ 4/255: brightest pixel ≈ 12/255);
- ``blur``: Gaussian blur, radius 4 px at 1024 px;
- ``zoom``: the centre 55 % of each side, scaled back up (a scale change ×1.8);
- ``arezzo``: the 9 Arezzo photos of exif-samples, odd against even (another town, another camera);
- ``sacre``: the ten Sacré-Cœur photos (ten photographers) mixed into the lund database at the
  basilica's position; each is a query against the other nine;
- out of coverage: the Arezzo photos and the ImageNet cat against the lund database, where a
  good answer is "no match" / confidence ``low``.

Usage::

    python benchmarks/bench_accuracy.py [--max-side 640] [--model lite0-vlad] [--sets lund,dark]
        [--verifier dense|sift] [--data DIR]

``--verifier sift``: re-rank with OpenCV SIFT instead of the dense deep features (the
comparison of docs/benchmarks.md). ``--data DIR``: keep the derived photos there and reuse them
(with a fixed ``GEOLOC_HOME``, later runs then reuse every cached descriptor).

Prints one table: R@1/R@5 at 25 m and at 10 m and the median error of the estimate, without
and with re-ranking, per set; then the calibration of the confidence levels (per level, the
share of queries whose truth lies inside the radius; docs/estimate.md), per set and over all
sets; then the flags and radii of the out-of-coverage queries.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
LUND = DATA / "lund" / "images"
AREZZO = sorted((DATA / "exif-samples" / "jpg" / "gps").glob("DSCN00*.jpg"))
SACRE = sorted((DATA / "sacre_coeur").glob("*.jpg"))
CAT = DATA / "imagenet" / "cat.bmp"
BASILICA = (48.8867, 2.3431)
SETS = ("lund", "left60", "right60", "opposite", "dark", "blur", "zoom", "arezzo", "sacre")


def _save(image: Image.Image, exif: bytes, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=92, exif=exif)
    return path


def derive(root: Path) -> None:
    """The hard variants of the lund walk, written under ``root`` (EXIF, so GPS, kept)."""
    rng = np.random.default_rng(0)
    for i in range(1, 30):
        src = LUND / f"{i:02d}.jpg"
        image = Image.open(src)
        exif = image.info.get("exif", b"")
        image = image.convert("RGB")
        w, h = image.size
        if i % 2:
            _save(image.crop((int(0.4 * w), 0, w, h)), exif, root / "db_right60" / src.name)
            continue
        _save(image.crop((0, 0, int(0.6 * w), h)), exif, root / "left60" / src.name)
        _save(image.crop((int(0.4 * w), 0, w, h)), exif, root / "right60" / src.name)
        a = np.asarray(image, dtype=np.float32) / 255.0
        d = np.clip(a * 0.25, 0, 1) ** 2.2 + rng.normal(0, 4 / 255, a.shape)
        _save(Image.fromarray((np.clip(d, 0, 1) * 255).round().astype(np.uint8)), exif, root / "dark" / src.name)
        _save(image.filter(ImageFilter.GaussianBlur(4)), exif, root / "blur" / src.name)
        cw, ch = int(0.55 * w), int(0.55 * h)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        zoomed = image.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.Resampling.BICUBIC)
        _save(zoomed, exif, root / "zoom" / src.name)


def _odd_even(paths):
    return paths[0::2], paths[1::2]


def split_for(name: str, root: Path):
    """(database images, queries) of one set, as a geoloc Split."""
    from geoloc.evaluation.datasets import read_csv_split, read_exif_split

    odd = [LUND / f"{i:02d}.jpg" for i in range(1, 30, 2)]
    even = [LUND / f"{i:02d}.jpg" for i in range(2, 30, 2)]
    if name == "lund":
        return read_exif_split(even, odd)
    if name in ("left60", "right60", "dark", "blur", "zoom"):
        return read_exif_split(sorted((root / name).glob("*.jpg")), odd)
    if name == "opposite":
        return read_exif_split(sorted((root / "left60").glob("*.jpg")), sorted((root / "db_right60").glob("*.jpg")))
    if name == "arezzo":
        db, queries = _odd_even(AREZZO)
        return read_exif_split(queries, db)
    if name == "sacre":
        # All ten at the basilica: each query's positives are the nine others.
        db_csv, q_csv = root / "sacre_db.csv", root / "sacre_q.csv"
        with open(db_csv, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "lat", "lon"])
            for p in odd:
                from geoloc.photos import read_meta

                meta = read_meta(p)
                writer.writerow([p, meta.lat, meta.lon])
            for p in SACRE[5:]:
                writer.writerow([p, *BASILICA])
        with open(q_csv, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "lat", "lon"])
            for p in SACRE[:5]:
                writer.writerow([p, *BASILICA])
        return read_csv_split(q_csv, [db_csv])
    raise SystemExit(f"unknown set {name}")


def figures(result) -> dict:
    s10 = None
    from geoloc.evaluation.metrics import recall_at

    dists = [o.truth_distances() for o in result.outcomes if o.scored]
    s10 = recall_at(dists, 10.0, (1, 5))
    s = result.summary
    return {"r1": s.recall[1], "r5": s.recall[5], "r1_10": s10[1], "r5_10": s10[5], "median": s.median_error_m}


def calibration_cell(outcomes) -> str:
    """``high 12/13 in radius, medium 1/1, low 0/0`` for one set's outcomes."""
    from geoloc.evaluation.metrics import calibration

    parts = []
    for level, c in calibration(outcomes).items():
        inside = round((c["within_radius"] or 0) * c["queries"])
        parts.append(f"{level} {inside}/{c['queries']}")
    return ", ".join(parts)


def out_of_coverage(max_side: int, model: str, verifier: str = "dense") -> list[str]:
    from geoloc.indexing.run import IndexConfig, index_photos
    from geoloc.locating.locator import LocateConfig, Locator

    db = Path(tempfile.mkdtemp(prefix="geoloc-ooc-")) / "db"
    index_photos([LUND / f"{i:02d}.jpg" for i in range(1, 30, 2)], db,
                 IndexConfig(model=model, max_side=max_side, device="cpu"))
    lines = []
    for rerank in (False, True):
        cfg = LocateConfig(device="cpu")
        cfg.rerank.enabled = rerank
        cfg.rerank.verifier = verifier
        with Locator(db, cfg) as locator:
            results = locator.locate(AREZZO + [CAT])
        conf = [r.estimate.confidence for r in results]
        flags = [r.estimate.verification for r in results]
        radii = sorted(r.estimate.radius_m for r in results)
        lines.append(f"{'with' if rerank else 'without'} re-ranking: confidence low {conf.count('low')}/"
                     f"{len(conf)}, medium {conf.count('medium')}, high {conf.count('high')}"
                     + (f"; no match {flags.count('no match')}/{len(flags)}" if rerank else "")
                     + f"; radius {radii[0]:,.0f}–{radii[-1]:,.0f} m")
    shutil.rmtree(db.parent, ignore_errors=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-side", type=int, default=640)
    ap.add_argument("--model", default="lite0-vlad")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--verifier", default="dense", choices=("dense", "sift"))
    ap.add_argument("--data", type=Path, default=None, help="derived photos kept (and reused) here")
    ap.add_argument("--no-ooc", action="store_true", help="skip the out-of-coverage queries")
    args = ap.parse_args()
    os.environ.setdefault("GEOLOC_HOME", tempfile.mkdtemp(prefix="geoloc-bench-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from geoloc.evaluation import EvalConfig, evaluate_split

    root = args.data or Path(tempfile.mkdtemp(prefix="geoloc-dev-"))
    if not (root / "zoom").is_dir():
        derive(root)
    print(f"model {args.model}, max side {args.max_side}, verifier {args.verifier}; "
          "R@1/R@5 at 25 m, at 10 m, median error (m)")
    print(f"{'set':10} {'queries':>7}  {'without re-ranking':>32}  {'with re-ranking':>32}  {'s/query':>7}")
    pooled = {False: [], True: []}
    calibrated = []
    for name in args.sets.split(","):
        split = split_for(name, root)
        row = []
        cal = []
        for rerank in (False, True):
            config = EvalConfig(model=args.model, max_side=args.max_side, device="cpu", rerank=rerank,
                                rerank_verifier=args.verifier)
            start = time.perf_counter()
            result = evaluate_split(split, config)
            seconds = time.perf_counter() - start
            f = figures(result)
            pooled[rerank] += result.outcomes
            cal.append(calibration_cell(result.outcomes))
            row.append(f"{100*f['r1']:5.1f}/{100*f['r5']:5.1f} {100*f['r1_10']:5.1f}/{100*f['r5_10']:5.1f} "
                       f"{f['median'] or float('nan'):6.1f}")
        print(f"{name:10} {result.summary.queries:7d}  {row[0]:>32}  {row[1]:>32}  "
              f"{seconds / max(result.summary.queries, 1):7.2f}", flush=True)
        calibrated.append((name, cal))
    print("\nconfidence calibration: queries inside the radius / queries at that level")
    print(f"{'set':10} {'without re-ranking':>36}  {'with re-ranking':>36}")
    for name, cal in calibrated:
        print(f"{name:10} {cal[0]:>36}  {cal[1]:>36}")
    print(f"{'all':10} {calibration_cell(pooled[False]):>36}  {calibration_cell(pooled[True]):>36}")
    for line in [] if args.no_ooc else out_of_coverage(args.max_side, args.model, args.verifier):
        print("out of coverage (9 Arezzo photos + the cat vs lund):", line)
    if args.data is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
