"""Reading GPS tracks: geoloc's streaming readers against the plain way, side by side.

Writes a Records.json (Google Takeout, as Takeout writes it: pretty-printed, ISO times) and a
GPX 1.1 track (as a Garmin writes it: namespaced, one ``trkpt`` with ``ele``, ``time`` and
``hdop`` each) of N fixes into a temporary folder, then reads each

- with geoloc: ``geoloc.trips.tracks.read_track`` (the JSON walked one element at a time, the
  XML fed to defusedxml's parser in chunks; a clean ``Track`` of numpy arrays at the end);
- the plain way: ``json.load`` of the whole file; ``xml.etree.ElementTree.parse`` (C parser,
  a whole tree; no fixes extracted, so the plain way is given the easier job).

Each read runs in a fresh process, twice: once for the wall time and the growth of the peak
RSS (``ru_maxrss`` after the read less before it, imports done), once under ``tracemalloc``
for the peak of Python's allocations (tracing slows the read: its time is not used).

    python benchmarks/bench_tracks.py [--points 1000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2024, 5, 1, 6, 0, tzinfo=timezone.utc)


def write_records(path: Path, n: int) -> None:
    with open(path, "w") as fh:
        fh.write('{\n  "locations": [')
        for start in range(0, n, 50_000):
            stop = min(n, start + 50_000)
            fh.write(", ".join(
                f'{{\n    "latitudeE7": {481374300 + 7 * i},\n    "longitudeE7": {115754900 + 5 * i},\n'
                f'    "accuracy": {5 + i % 40},\n    "source": "WIFI",\n    "deviceTag": 1978796627,\n'
                f'    "timestamp": "{(T0 + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S")}.{i % 1000:03d}Z"\n  }}'
                for i in range(start, stop)))
            fh.write(", " if stop < n else "]\n}\n")


def write_gpx(path: Path, n: int) -> None:
    with open(path, "w") as fh:
        fh.write('<?xml version="1.0" encoding="UTF-8"?>\n<gpx creator="Garmin Connect" version="1.1" '
                 'xmlns="http://www.topografix.com/GPX/1/1" '
                 'xmlns:ns3="http://www.garmin.com/xmlschemas/TrackPointExtension/v1">\n'
                 '  <metadata><time>2024-05-01T06:00:00.000Z</time></metadata>\n  <trk>\n    <name>Walk</name>\n'
                 '    <trkseg>\n')
        fh.writelines("".join(
                f'      <trkpt lat="{48.1374300 + 7e-7 * i:.7f}" lon="{11.5754900 + 5e-7 * i:.7f}">\n'
                f'        <ele>{520 + (i % 100) / 10:.1f}</ele>\n'
                f'        <time>{(T0 + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S")}.000Z</time>\n'
                f'        <hdop>{1 + i % 3}.2</hdop>\n      </trkpt>\n'
                for i in range(start, min(n, start + 50_000))) for start in range(0, n, 50_000))
        fh.write("    </trkseg>\n  </trk>\n</gpx>\n")


def child(way: str, path: str, trace: bool) -> None:
    """Read ``path`` one way in this process; print seconds, RSS growth and tracemalloc peak."""
    import tracemalloc
    import xml.etree.ElementTree as ET

    import defusedxml.ElementTree  # noqa: F401
    import numpy  # noqa: F401  (imported before the baseline, as geoloc's reader needs it)

    from geoloc.trips import gpx, kml, takeout, tracks  # noqa: F401

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    if way == "geoloc":
        n = len(tracks.read_track(Path(path), warn=lambda m: None))
    elif path.endswith(".json"):
        with open(path, encoding="utf-8") as fh:
            n = len(json.load(fh)["locations"])
    else:
        n = sum(1 for _ in ET.parse(path).getroot().iter("{http://www.topografix.com/GPX/1/1}trkpt"))
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] if trace else 0
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"n": n, "seconds": seconds, "rss_mb": grown * 1024 / 1e6, "peak_mb": peak / 1e6}))


def measure(way: str, path: Path, trace: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, __file__, "--child", way, str(path)] + (["--trace"] if trace else []),
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="write the files here and keep them")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.trace)
        return
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench_tracks_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        files = {"Records.json": write_records, "track.gpx": write_gpx}
        print(f"{args.points:,} fixes per file; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n")
        header = f"{'file':<13}{'MB':>6}  {'reader':<22}{'time s':>8}{'tracemalloc MB':>16}{'RSS growth MB':>15}"
        print(header)
        print("-" * len(header))
        for name, writer in files.items():
            path = folder / name
            writer(path, args.points)
            size = path.stat().st_size / 1e6
            plain = "json.load" if name.endswith(".json") else "ElementTree.parse"
            rows = {}
            for way in ("geoloc", "plain"):
                timed, traced = measure(way, path, False), measure(way, path, True)
                assert timed["n"] == args.points, timed
                rows[way] = (timed["seconds"], traced["peak_mb"], timed["rss_mb"])
                label = "geoloc read_track" if way == "geoloc" else plain
                print(f"{name:<13}{size:>6.0f}  {label:<22}{timed['seconds']:>8.2f}{traced['peak_mb']:>16.1f}"
                      f"{timed['rss_mb']:>15.1f}")
            ratios = [g / p if p else float("nan") for g, p in zip(rows["geoloc"], rows["plain"])]
            print(f"{'':<19}  {'ratio geoloc/plain':<22}{ratios[0]:>8.2f}{ratios[1]:>16.3f}{ratios[2]:>15.3f}\n")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
