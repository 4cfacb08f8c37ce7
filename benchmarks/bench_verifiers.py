"""Every verifier on the dev sets: accuracy, confidence calibration and cost, per set.

    python benchmarks/bench_verifiers.py --out /tmp/verifiers.json             # all verifiers
    python benchmarks/bench_verifiers.py --verifiers dense,dense+xfeat --sets lund,night
    python benchmarks/bench_verifiers.py --rejudge /tmp/verifiers.json   # confidence before/after
    python benchmarks/bench_verifiers.py --max-side 224 --verifiers dense,dense+xfeat   # small images

One database (EfficientNet-Lite0 + NetVLAD at 640 px, the size locate verifies at, or ``--max-side``): the odd
Lund frames, the nine photos of the Arezzo walk and five of the ten Sacré-Cœur photos (placed at
the basilica, 48.8867 N 2.3431 E, written into copies: the originals carry no GPS). Queries:

* ``lund``: the even Lund frames; ``night``: the same darkened as tests/test_rerank.py does
  (exposure ×0.25, gamma 2.2, noise); ``blur``: Gaussian blur, radius 4 px; ``rotation``: turned
  by 20°; ``crops``: the left 55 % of frames 02–14 and the right 55 % of 16–28;
* ``arezzo``: each Arezzo photo against the others (a photo is never its own candidate);
* ``sacre-coeur``: the other five Sacré-Cœur photos (another photographer, side, time of day);
* ``out``: ImageNet's cat.bmp, which no database photo shows (must never be ``high``).

Printed per set and verifier: recall@1/5 (a candidate within 25 m), the estimate's median error,
the share of ``high`` answers and how many of them hold the truth inside their radius, and
seconds per query (the verification alone, and the whole locate). ``--out`` keeps every query's
top-1 homography inliers and estimate, from which :func:`calibrate` sets the flag's thresholds.
Then the cost breakdown of one warm query (query extraction, candidate extraction per photo,
matching, geometry). Nothing is written outside a temporary folder and GEOLOC_HOME's cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
LUND = DATA / "lund" / "images"
AREZZO = DATA / "exif-samples" / "jpg" / "gps"
SACRE = DATA / "sacre_coeur"
CAT = DATA / "imagenet" / "cat.bmp"
BASILICA = (48.8867, 2.3431)
SETS = ("lund", "night", "blur", "rotation", "crops", "arezzo", "sacre-coeur", "out")
VERIFIERS = ("dense", "sift", "xfeat", "dense+xfeat", "dense+aliked", "aliked")


def _save(image: Image.Image, src: Image.Image, dest: Path) -> Path:
    image.save(dest, quality=92, exif=src.info.get("exif", b""))
    return dest


def _darken(src: Path, dest: Path, seed: int) -> Path:
    image = Image.open(src)
    a = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    d = np.clip(a * 0.25, 0, 1) ** 2.2 + np.random.default_rng(seed).normal(0, 4 / 255, a.shape)
    return _save(Image.fromarray((np.clip(d, 0, 1) * 255).round().astype(np.uint8)), image, dest)


def _with_gps(src: Path, dest: Path, lat: float, lon: float) -> Path:
    image = Image.open(src)
    exif = image.getexif()
    gps = exif.get_ifd(0x8825)

    def dms(v: float):
        d = int(v)
        m = int((v - d) * 60)
        return (float(d), float(m), round(((v - d) * 60 - m) * 60, 4))

    gps.update({1: "N", 2: dms(lat), 3: "E", 4: dms(lon)})
    image.save(dest, quality=95, exif=exif)
    return dest


def build(tmp: Path, max_side: int = 640) -> tuple[Path, dict[str, list[Path]]]:
    """The database and the query sets (derived photos keep their EXIF, so their GPS)."""
    from geoloc.indexing.run import IndexConfig, index_photos

    db_photos = [LUND / f"{i:02d}.jpg" for i in range(1, 30, 2)] + sorted(AREZZO.glob("*.jpg"))
    sacre = sorted(SACRE.glob("*.jpg"))
    (tmp / "sacre").mkdir()
    placed = [_with_gps(p, tmp / "sacre" / p.name, *BASILICA) for p in sacre]
    db_photos += placed[0::2]
    even = [LUND / f"{i:02d}.jpg" for i in range(2, 30, 2)]
    sets: dict[str, list[Path]] = {"lund": even, "arezzo": sorted(AREZZO.glob("*.jpg")),
                                   "sacre-coeur": placed[1::2], "out": [CAT]}
    for name in ("night", "blur", "rotation", "crops"):
        (tmp / name).mkdir()
        sets[name] = []
    for n, src in zip(range(2, 30, 2), even):
        image = Image.open(src)
        sets["night"].append(_darken(src, tmp / "night" / src.name, seed=n))
        sets["blur"].append(_save(image.filter(ImageFilter.GaussianBlur(4)), image, tmp / "blur" / src.name))
        sets["rotation"].append(_save(image.rotate(20, resample=Image.BICUBIC), image, tmp / "rotation" / src.name))
        w, h = image.size
        box = (0, 0, int(w * 0.55), h) if n <= 14 else (int(w * 0.45), 0, w, h)
        sets["crops"].append(_save(image.crop(box), image, tmp / "crops" / src.name))
    report = index_photos(db_photos, tmp / "db", IndexConfig(model="lite0-vlad", max_side=max_side, device="cpu"))
    if report.located != len(db_photos):
        sys.exit(f"indexing failed: {report.to_json()}")
    return tmp / "db", sets


def run(db: Path, sets: dict[str, list[Path]], verifier: str, threshold_m: float = 25.0) -> dict:
    """Every set located with one verifier: per query, the figures calibration needs."""
    from geoloc.geo import haversine_m
    from geoloc.locating.locator import LocateConfig, Locator
    from geoloc.retrieval.rerank import RerankConfig

    out: dict = {}
    config = LocateConfig(device="cpu", top_k=20, rerank=RerankConfig(verifier=verifier))
    with Locator(db, config) as locator:
        for name, queries in sets.items():
            rows = []
            for q in queries:
                before = (locator.timings.rerank_s, locator.timings.descriptor_s, locator.timings.search_s)
                start = time.perf_counter()
                (r,) = locator.locate([q])
                total = time.perf_counter() - start
                verify_s = locator.timings.rerank_s - before[0]
                truth = r.query_gps
                row = {"query": q.name, "total_s": total, "rerank_s": verify_s, "error": r.error,
                       "truth": truth,
                       # what the estimate looked at, in its order: enough to judge it again
                       # offline under another confidence rule (rejudge)
                       "candidates": [[c.lat, c.lon, c.score, c.inliers, c.verifier] for c in r.candidates]}
                if r.estimate is not None:
                    e = r.estimate
                    row.update(confidence=e.confidence, verification=e.verification, top_inliers=e.top_inliers,
                               lat=e.lat, lon=e.lon, radius_m=e.radius_m, support=e.support,
                               agreement=e.agreement, considered=e.considered, extent_m=e.extent_m)
                    if truth is not None:
                        dists = [haversine_m(c.lat, c.lon, *truth) for c in r.candidates]
                        row.update(error_m=float(haversine_m(e.lat, e.lon, *truth)),
                                   r1=bool(dists and dists[0] <= threshold_m),
                                   r5=any(d <= threshold_m for d in dists[:5]))
                rows.append(row)
            out[name] = rows
        learned = locator.reranker.learned if config.rerank.enabled else None
        out["_learned_timings"] = dict(learned.timings) if learned else None
    return out


def summary(rows: list[dict]) -> dict:
    located = [r for r in rows if "r1" in r]
    high = [r for r in rows if r.get("confidence") == "high"]
    right_high = [r for r in high if "error_m" in r and r["error_m"] <= r["radius_m"]]
    return {
        "queries": len(rows),
        "recall@1": statistics.mean(r["r1"] for r in located) if located else None,
        "recall@5": statistics.mean(r["r5"] for r in located) if located else None,
        "median_m": statistics.median(r["error_m"] for r in located) if located else None,
        "high": len(high),
        "high_right": len(right_high) if located else None,
        "verify_s": statistics.mean(r["rerank_s"] for r in rows),
        "locate_s": statistics.mean(r["total_s"] for r in rows),
    }


def calibrate(rows: list[dict], out_rows: list[dict]) -> tuple[int, int]:
    """The flag's thresholds from per-query figures: ``no match`` below one more than the most
    an out-of-coverage query reached; ``verified`` from the smallest count at which at least 90 %
    of the queries that reach it hold the truth inside their radius."""
    no_match = max([r.get("top_inliers") or 0 for r in out_rows] + [0]) + 1
    located = sorted((r for r in rows if "error_m" in r and r.get("top_inliers") is not None),
                     key=lambda r: r["top_inliers"])
    for r in located:
        t = r["top_inliers"]
        above = [x for x in located if x["top_inliers"] >= t]
        if t >= no_match and statistics.mean(x["error_m"] <= max(x["radius_m"], 25.0) for x in above) >= 0.9:
            return t, no_match
    return max(no_match, 10**6), no_match


def rejudge(results: dict, verified_weight: float) -> dict:
    """Every query of a ``--out`` file judged again from its recorded candidates, with
    verification weighed into the agreement by ``verified_weight`` (0: cosines alone, the rule
    before it): per verifier, {level: [queries, truth inside]}, out-of-coverage ``high``, and
    night queries ``high`` (and how many with the truth inside). The estimate is what locate computes
    (:func:`geoloc.locating.estimate.judge`, first 10 candidates, anchored on the first)."""
    from geoloc.geo import haversine_m
    from geoloc.locating.estimate import ConfidenceConfig, judge
    from geoloc.locating.judge import verified_bars

    table: dict = {}
    for v, sets in results.items():
        levels = {k: [0, 0] for k in ("high", "medium", "low")}
        out_high = night_high = night_right = 0
        for name, rows in sets.items():
            if name.startswith("_"):
                continue
            for r in rows:
                c = r.get("candidates")[:10]
                if not c:
                    continue
                lats, lons, scores, inl, names = (list(x) for x in zip(*c))
                e = judge(lats, lons, scores, anchor=0, verification=r["verification"],
                          top_inliers=r["top_inliers"], inliers=inl, bars=verified_bars(names),
                          confidence_config=ConfidenceConfig(verified_weight=verified_weight))
                # out of coverage: the cat, and the Arezzo walk (its neighbours too far to be the place)
                out_high += name in ("out", "arezzo") and e.confidence == "high"
                inside = r.get("truth") is not None and haversine_m(e.lat, e.lon, *r["truth"]) <= e.radius_m
                levels[e.confidence][0] += 1
                levels[e.confidence][1] += inside
                night_high += name == "night" and e.confidence == "high"
                night_right += name == "night" and e.confidence == "high" and inside
        table[v] = {"levels": levels, "out_high": out_high, "night_high": night_high, "night_high_right": night_right}
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--verifiers", default=",".join(VERIFIERS))
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--max-side", type=int, default=640, help="the database's image size (small images: 224, 320)")
    ap.add_argument("--rejudge", type=Path, nargs="+", help="judge --out files' queries again, before and "
                    "after verification is weighed into the agreement; runs nothing else")
    args = ap.parse_args()
    if args.rejudge:
        from geoloc.locating.estimate import ConfidenceConfig

        results = {v: r for path in args.rejudge for v, r in json.loads(path.read_text()).items()}
        for weight in (0.0, ConfidenceConfig().verified_weight):
            print(f"\n## verified_weight {weight:g}" + (" (cosines alone, the rule before)" if not weight else ""))
            print(f"{'verifier':14} {'high':>12} {'medium':>8} {'low':>8} {'out high':>9} {'night high: right':>17}")
            for v, t in rejudge(results, weight).items():
                lv = t["levels"]
                pct = f" {lv['high'][1] / lv['high'][0]:.1%}" if lv["high"][0] else ""
                print(f"{v:14} {lv['high'][1]:>3}/{lv['high'][0]:<3}{pct:>6} {lv['medium'][1]:>3}/{lv['medium'][0]:<3} "
                      f"{lv['low'][1]:>3}/{lv['low'][0]:<3} {t['out_high']:>9} "
                      f"{t['night_high_right']:>14}/{t['night_high']:<2}")
        return
    import torch

    torch.set_num_threads(2)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    verifiers = [v for v in args.verifiers.split(",") if v]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GEOLOC_HOME"] = str(Path(tmp) / "home")  # a cold feature cache per run
        db, sets = build(Path(tmp), args.max_side)
        sets = {k: v for k, v in sets.items() if k in args.sets.split(",")}
        results = {}
        for v in verifiers:
            shutil.rmtree(Path(tmp) / "home" / "cache" / "features", ignore_errors=True)
            cold = run(db, {"lund": sets["lund"]}, v) if "lund" in sets else None
            results[v] = run(db, sets, v)  # warm: the database photos' keypoints are cached
            results[v]["_cold_lund"] = cold
            print(f"\n## {v}")
            print(f"{'set':12} {'n':>3} {'R@1':>5} {'R@5':>5} {'median m':>9} {'high':>5} {'right':>6} {'verify s':>9} {'locate s':>9}")
            for name in sets:
                s = summary(results[v][name])
                fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
                print(f"{name:12} {s['queries']:3d} {fmt(s['recall@1'], '.2f'):>5} {fmt(s['recall@5'], '.2f'):>5} "
                      f"{fmt(s['median_m'], '.1f'):>9} {s['high']:5d} {fmt(s['high_right'], 'd'):>6} "
                      f"{s['verify_s']:9.3f} {s['locate_s']:9.3f}")
            t = results[v]["_learned_timings"]
            if t:
                print(f"learned, warm run: load {t['load_s']:.2f} s; {t['extracted']} extractions "
                      f"{t['extract_s'] / max(t['extracted'], 1):.3f} s each; {t['matched']} matches "
                      f"{t['match_s'] / max(t['matched'], 1):.3f} s each")
            if cold and cold.get("_learned_timings"):
                c = cold["_learned_timings"]
                print(f"learned, cold lund run: {c['extracted']} extractions {c['extract_s'] / max(c['extracted'], 1):.3f} s each")
            located = [r for k in sets if k != "out" for r in results[v][k]]
            if "out" in sets:
                print("calibrated (verified_min, no_match_max):", calibrate(located, results[v]["out"]))
        if args.out:
            args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
