"""Trips derived from the Lund walk, for the trips tests and benchmark (docs/trips.md).

The Lund photos carry GPS but no capture time. A walk is made of them: frame i is taken when a
walker at ``PACE_MPS`` along the photos' own GPS path reaches it (a few seconds' pause where the
GPS does not move), starting at ``START_UTC``. Then:

- a phone (``PHONE``) took the odd frames: GPS, GPS time stamps, local time with its zone;
- a camera (``CAMERA``) took the even frames: no GPS, its clock ``offset_s`` ahead of UTC (the
  solver is not told), no zone;
- a GPX track can be written from the GPS of some frames, with their times;
- frames in name order without any time (``--sequence``) are the even frames as they are.
"""

from __future__ import annotations

import csv
import math
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path

START_UTC = datetime(2024, 5, 1, 8, 0, 0, tzinfo=timezone.utc)
PACE_MPS = 1.3
PAUSE_S = 5.0
PHONE = ("Google", "Pixel 7")
CAMERA = ("FUJIFILM", "X-T30")
PHONE_ZONE = "+02:00"


def lund_walk(lund_dir: Path) -> list[tuple[str, float, float, datetime]]:
    """(name, lat, lon, UTC time) of each Lund frame along the walk, in order."""
    rows = []
    with open(Path(lund_dir).parent / "gps_from_exif.csv", newline="") as f:
        for row in csv.DictReader(f):
            rows.append((row[next(iter(row))], float(row["lat"]), float(row["lon"])))
    rows.sort()
    out, t, prev = [], START_UTC, None
    for name, lat, lon in rows:
        if prev is not None:
            d = _metres(prev[1], prev[2], lat, lon)
            t += timedelta(seconds=d / PACE_MPS if d > 0.5 else PAUSE_S)
        out.append((name, lat, lon, t))
        prev = (name, lat, lon)
    return out


def write_photo(src: Path, dst: Path, *, make_model, taken: datetime, zone: str | None = None,
                gps: tuple[float, float] | None = None, gps_time: datetime | None = None) -> Path:
    """``src``'s pixels with the EXIF a real device writes: Make, Model, DateTimeOriginal
    (``taken`` as its clock shows it), OffsetTimeOriginal, GPS with its time stamp."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = make_model
    sub = exif.get_ifd(0x8769)
    sub[0x9003] = taken.strftime("%Y:%m:%d %H:%M:%S")
    if zone:
        sub[0x9011] = zone
    if gps is not None:
        block = exif.get_ifd(0x8825)
        block[1], block[2] = ("N" if gps[0] >= 0 else "S"), _dms(gps[0])
        block[3], block[4] = ("E" if gps[1] >= 0 else "W"), _dms(gps[1])
        if gps_time is not None:
            block[7] = (Fraction(gps_time.hour), Fraction(gps_time.minute), Fraction(gps_time.second))
            block[29] = gps_time.strftime("%Y:%m:%d")
    with Image.open(src) as im:
        im.save(dst, exif=exif, quality=92)
    return dst


def build_trip(lund_dir: Path, folder: Path, *, camera_offset_s: float) -> dict:
    """The phone's odd frames in ``folder/phone``, the camera's even frames in
    ``folder/camera``; returns ``{name: (lat, lon)}`` for the camera's frames (the truth)."""
    phone, camera = Path(folder) / "phone", Path(folder) / "camera"
    phone.mkdir(parents=True, exist_ok=True)
    camera.mkdir(parents=True, exist_ok=True)
    zone = timedelta(hours=int(PHONE_ZONE[1:3]), minutes=int(PHONE_ZONE[4:6]))
    truth = {}
    for i, (name, lat, lon, utc) in enumerate(lund_walk(lund_dir), start=1):
        src = Path(lund_dir) / name
        if i % 2:
            write_photo(src, phone / name, make_model=PHONE, taken=(utc + zone).replace(tzinfo=None),
                        zone=PHONE_ZONE, gps=(lat, lon), gps_time=utc)
        else:
            clock = (utc + timedelta(seconds=camera_offset_s)).replace(tzinfo=None)
            write_photo(src, camera / name, make_model=CAMERA, taken=clock)
            truth[name] = (lat, lon)
    return truth


def write_gpx(lund_dir: Path, target: Path, every: int = 1) -> Path:
    """A GPX 1.1 track (as a phone app writes it) from every ``every``-th frame's GPS and time."""
    points = lund_walk(lund_dir)[::every]
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<gpx version="1.1" creator="OpenTracks" xmlns="http://www.topografix.com/GPX/1/1">',
             "<trk><name>Lund walk</name><trkseg>"]
    for _, lat, lon, t in points:
        lines.append(f'<trkpt lat="{lat:.7f}" lon="{lon:.7f}"><time>{t.strftime("%Y-%m-%dT%H:%M:%SZ")}</time></trkpt>')
    lines.append("</trkseg></trk></gpx>")
    Path(target).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(target)


def _dms(value: float):
    value = abs(value)
    d = int(value)
    m = int((value - d) * 60)
    s = (value - d - m / 60) * 3600
    return (Fraction(d), Fraction(m), Fraction(round(s * 10000), 10000))


def _metres(lat1, lon1, lat2, lon2) -> float:
    p = math.pi / 180
    a = (math.sin((lat2 - lat1) * p / 2) ** 2
         + math.cos(lat1 * p) * math.cos(lat2 * p) * math.sin((lon2 - lon1) * p / 2) ** 2)
    return 12_742_000 * math.asin(math.sqrt(a))
