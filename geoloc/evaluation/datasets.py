"""Benchmark splits: which images form the database, which are queries, and where each was taken.

Place-recognition benchmarks ship their ground truth in three ways — UTM coordinates packed into
file names, MATLAB ``dbStruct`` files, or plain tables — and users' own photos carry it in EXIF.
Every reader here (and :mod:`geoloc.evaluation.dbstruct` for the ``.mat`` files) turns its format
into one :class:`~geoloc.evaluation.split.Split`, so the metrics never care where the truth came
from. Benchmarks score positives by planar UTM distance (that is how the published
figures were computed), so UTM is kept when a dataset has it; otherwise distances are great-circle.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from geoloc.errors import GeolocError, PhotoError, UsageError
from geoloc.geo import is_valid_position, utm_to_latlon
from geoloc.formatting import count
from geoloc.evaluation.dbstruct import read_dbstruct
from geoloc.evaluation.split import Positions, Split
from geoloc.photos.discovery import SUFFIXES

IMAGE_SUFFIXES = SUFFIXES


# ---------------------------------------------------------------------------------------------
# building positions


def _positions_from_rows(rows: list[tuple[float, float, float, float, int | None, bool | None]]) -> Positions:
    """rows: (lat, lon, east, north, zone, northern) with NaN/None where unknown."""
    lat = np.array([r[0] for r in rows], dtype=np.float64)
    lon = np.array([r[1] for r in rows], dtype=np.float64)
    utm = None
    zones = {(r[4], r[5]) for r in rows}
    if rows and all(math.isfinite(r[2]) and math.isfinite(r[3]) for r in rows) and len(zones) == 1:
        utm = np.array([[r[2], r[3]] for r in rows], dtype=np.float64)
    # fill lat/lon from UTM where the zone is known, so maps and CSVs have coordinates
    for i, r in enumerate(rows):
        if not (math.isfinite(lat[i]) and math.isfinite(lon[i])) and r[4] is not None and math.isfinite(r[2]):
            lat[i], lon[i] = utm_to_latlon(r[2], r[3], int(r[4]), bool(r[5]))
    return Positions(lat, lon, utm)


def _unify(split: Split) -> Split:
    """UTM on one side only, or in two zones, cannot be compared: fall back to lat/lon."""
    if split.db.utm is not None and split.queries.utm is not None:
        return split
    split.db.utm = None
    split.queries.utm = None
    for side in ("database", "queries"):
        pos = split.db if side == "database" else split.queries
        if len(pos) and not pos.has_latlon:
            raise GeolocError(
                f"{split.source}: {side} positions are in UTM without a zone and the other side is not; "
                "pass --utm-zone (e.g. 17T) to compare them"
            )
    return split


# ---------------------------------------------------------------------------------------------
# the @UTM_east@UTM_north@zone@letter@lat@lon@...@.jpg file-name convention


def parse_utm_name(name: str) -> tuple[float, float, float, float, int | None, bool | None]:
    """(lat, lon, east, north, zone, northern) from a benchmark file name; ValueError if none.

    Fields may be empty; a name needs either east+north or lat+lon.
    """
    stem = Path(name).name
    parts = stem.split("@")
    if len(parts) < 3 or parts[0] != "":
        raise ValueError("file name does not follow the @UTM_east@UTM_north@zone@letter@lat@lon@…@ convention")

    def num(i: int) -> float:
        if i >= len(parts) or parts[i].strip() == "":
            return math.nan
        try:
            return float(parts[i])
        except ValueError:
            raise ValueError(f"field {i} ({parts[i]!r}) is not a number") from None

    east, north = num(1), num(2)
    lat, lon = num(5), num(6)
    zone: int | None = None
    northern: bool | None = None
    if len(parts) > 3 and parts[3].strip():
        try:
            zone = int(float(parts[3]))
        except ValueError:
            raise ValueError(f"UTM zone {parts[3]!r} is not a number") from None
        if not 1 <= zone <= 60:
            raise ValueError(f"UTM zone {zone} is outside 1–60")
    if len(parts) > 4 and parts[4].strip():
        letter = parts[4].strip().upper()
        northern = letter >= "N"
    elif zone is not None and math.isfinite(lat):
        northern = lat >= 0
    elif zone is not None:
        northern = True
    has_utm = math.isfinite(east) and math.isfinite(north)
    has_ll = math.isfinite(lat) and math.isfinite(lon)
    if not has_utm and not has_ll:
        raise ValueError("file name carries neither UTM nor lat/lon")
    if has_ll and not is_valid_position(lat, lon):
        raise ValueError(f"lat/lon {lat}, {lon} out of range")
    return lat, lon, east, north, zone, northern


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def find_utm_split_folders(root: Path, split: str = "test") -> tuple[Path, Path] | None:
    """The database and queries folders of a benchmark laid out as images/<split>/{database,queries}."""
    for base in (root / "images" / split, root / split, root):
        db, q = base / "database", base / "queries"
        if db.is_dir() and q.is_dir():
            return db, q
    return None


def read_utm_folder(root: Path, split: str = "test") -> Split:
    """A benchmark folder in the @UTM@ file-name convention (images/<split>/{database,queries})."""
    root = Path(root)
    folders = find_utm_split_folders(root, split)
    if folders is None:
        raise GeolocError(f"{root}: no images/{split}/database and images/{split}/queries folders")
    problems: list[PhotoError] = []
    sides = []
    for folder in folders:
        paths, rows = [], []
        for p in _list_images(folder):
            try:
                rows.append(parse_utm_name(p.name))
            except ValueError as exc:
                problems.append(PhotoError(p, str(exc)))
                continue
            paths.append(p.absolute())
        if not paths:
            raise GeolocError(f"{folder}: no images named in the @UTM_east@UTM_north@zone@letter@lat@lon@…@ convention")
        sides.append((paths, _positions_from_rows(rows)))
    (db_paths, db), (q_paths, q) = sides
    name = root.resolve().name if root.resolve().name not in ("images", split) else root.resolve().parent.name
    out = Split(name, "utm-names", str(root.resolve()), db_paths, db, q_paths, q, None, problems)
    return _unify(out)


# ---------------------------------------------------------------------------------------------
# plain CSV: path, lat, lon

_PATH_COLS = ("path", "file", "filename", "image", "name", "query")
_LAT_COLS = ("lat", "latitude", "gps_lat")
_LON_COLS = ("lon", "lng", "long", "longitude", "gps_lon")


def read_location_csv(csv_path: Path, problems: list[PhotoError] | None = None) -> tuple[list[Path], Positions]:
    """Rows of path, lat, lon (a header naming them is optional; other columns are ignored).

    Relative paths are relative to the CSV's folder. Bad rows are reported and skipped.
    """
    csv_path = Path(csv_path)
    problems = problems if problems is not None else []
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise GeolocError(f"{csv_path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GeolocError(f"{csv_path}: cannot read ({exc})") from None
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.reader(text.splitlines(), dialect))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise GeolocError(f"{csv_path}: empty CSV")
    header = [c.strip().lower() for c in rows[0]]
    cols = (0, 1, 2)
    start = 0
    if not _is_number(rows[0][1] if len(rows[0]) > 1 else ""):
        start = 1

        def pick(names: tuple[str, ...], default: int) -> int:
            return next((header.index(n) for n in names if n in header), default)

        cols = (pick(_PATH_COLS, 0), pick(_LAT_COLS, 1), pick(_LON_COLS, 2))
        if len(set(cols)) < 3:
            raise GeolocError(f"{csv_path}: cannot tell the path, lat and lon columns apart in the header {rows[0]}")
    base = csv_path.parent
    paths, lat, lon = [], [], []
    for line_no, row in enumerate(rows[start:], start=start + 1):
        try:
            raw = row[cols[0]].strip()
            la, lo = float(row[cols[1]]), float(row[cols[2]])
        except (IndexError, ValueError):
            problems.append(PhotoError(f"{csv_path}:{line_no}", "expected path, lat, lon"))
            continue
        p = Path(raw).expanduser()
        p = p if p.is_absolute() else base / p
        if not is_valid_position(la, lo):
            problems.append(PhotoError(p, f"{csv_path.name} line {line_no}: invalid position {la}, {lo}"))
            continue
        if not p.is_file():
            problems.append(PhotoError(p, f"listed in {csv_path.name} line {line_no} but not found"))
            continue
        paths.append(p.absolute())
        lat.append(la)
        lon.append(lo)
    return paths, Positions(np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64))


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# photos with EXIF GPS


QUERY_WITHOUT_GPS = "no GPS position in its EXIF: no ground truth, not scored"
DB_PHOTO_WITHOUT_GPS = "no GPS position in its EXIF: left out of the database side"


def photos_with_gps(
    inputs: Iterable[Path | str],
    problems: list[PhotoError],
    read_meta: Callable[[Path], object] | None = None,
    without_gps: str | None = None,
) -> tuple[list[Path], Positions, int]:
    """Discovered photos that carry a usable EXIF position; returns (paths, positions, skipped).

    With ``without_gps`` (a reason), each photo without a position is also listed in
    ``problems``: a count alone leaves the user guessing which of their photos did not count.
    """
    from geoloc.photos import discover, expand_globs
    from geoloc.photos import read_meta as _read_meta

    read_meta = read_meta or _read_meta
    paths, lat, lon = [], [], []
    skipped = 0
    for p in discover(expand_globs(inputs), on_error=problems.append):
        meta = read_meta(p)
        if getattr(meta, "located", False):
            paths.append(Path(p).absolute())
            lat.append(float(meta.lat))
            lon.append(float(meta.lon))
        else:
            skipped += 1
            if without_gps:
                problems.append(PhotoError(Path(p), without_gps))
    return paths, Positions(np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)), skipped


def read_csv_split(queries_csv: Path, db_source: Sequence[Path | str]) -> Split:
    """Queries from a CSV of path, lat, lon; the database from a CSV too, or photos with EXIF GPS."""
    problems: list[PhotoError] = []
    q_paths, q = read_location_csv(Path(queries_csv), problems)
    if not q_paths:
        raise GeolocError(f"{queries_csv}: no usable rows of path, lat, lon")
    db_paths, db = _db_side(db_source, problems)
    source = f"{Path(queries_csv).resolve()} | " + " ".join(str(Path(s).resolve()) if Path(s).exists() else str(s) for s in db_source)
    return Split(Path(queries_csv).stem, "csv", source, db_paths, db, q_paths, q, None, problems)


def read_exif_split(queries: Sequence[Path | str], db_source: Sequence[Path | str]) -> Split:
    """Queries and database both from photos whose EXIF carries GPS (or a CSV for the database)."""
    problems: list[PhotoError] = []
    q_paths, q, skipped = photos_with_gps(queries, problems, without_gps=QUERY_WITHOUT_GPS)
    if not q_paths:
        raise GeolocError("none of the query photos carries a GPS position to score against")
    db_paths, db = _db_side(db_source, problems)
    overlap = {os.path.realpath(p) for p in q_paths} & {os.path.realpath(p) for p in db_paths}
    if overlap:
        raise UsageError(
            f"{count(len(overlap), 'photo is', 'photos are')} both queries and database images (e.g. {min(overlap)}); "
            "a query would find itself"
        )
    source = " ".join(sorted(str(Path(s).resolve()) if Path(s).exists() else str(s) for s in db_source))
    return Split(
        _common_name(db_paths + q_paths), "exif", source, db_paths, db, q_paths, q, None, problems, skipped
    )


def _common_name(paths: Sequence[Path]) -> str:
    """A readable dataset name: the folder the photos share (its parent for a generic name)."""
    try:
        common = Path(os.path.commonpath([os.path.abspath(p) for p in paths]))
    except ValueError:
        return "photos"
    if common.suffix.lower() in IMAGE_SUFFIXES:
        common = common.parent
    if common.name.lower() in ("images", "photos", "db", "database", "queries", "jpg") and common.parent.name:
        return common.parent.name
    return common.name or "photos"


def _db_side(db_source: Sequence[Path | str], problems: list[PhotoError]) -> tuple[list[Path], Positions]:
    if len(db_source) == 1 and str(db_source[0]).lower().endswith(".csv") and Path(db_source[0]).is_file():
        paths, pos = read_location_csv(Path(db_source[0]), problems)
    else:
        paths, pos, _ = photos_with_gps(db_source, problems, without_gps=DB_PHOTO_WITHOUT_GPS)
    if not paths:
        raise GeolocError("the database side has no images with a position: " + ", ".join(map(str, db_source)))
    return paths, pos


# ---------------------------------------------------------------------------------------------
# auto-detection


def load_dataset(
    path: Path,
    *,
    db_images: Sequence[Path | str] = (),
    images_root: Path | None = None,
    queries_root: Path | None = None,
    split: str = "test",
    utm_zone: str | None = None,
) -> Split:
    """Recognise a benchmark by its shape: an @UTM@ folder, a dbStruct .mat, or a CSV of queries."""
    path = Path(path).expanduser()
    if not path.exists():
        raise GeolocError(f"{path}: no such file or folder")
    if path.is_dir():
        if find_utm_split_folders(path, split) is not None:
            return read_utm_folder(path, split)
        mats = sorted(path.glob(f"*{split}*.mat")) or sorted(path.glob("*.mat"))
        if len(mats) == 1:
            return read_dbstruct(mats[0], images_root or path, queries_root, utm_zone)
        raise GeolocError(
            f"{path}: not a benchmark folder (expected images/{split}/database and images/{split}/queries "
            f"in the @UTM@ naming, or one dbStruct .mat file; found {len(mats)} .mat files)"
        )
    suffix = path.suffix.lower()
    if suffix == ".mat":
        return read_dbstruct(path, images_root, queries_root, utm_zone)
    if suffix in (".csv", ".tsv", ".txt"):
        if not db_images:
            raise UsageError(f"{path}: a CSV of queries needs its database: --db-images DB.csv or a folder of GPS-tagged photos")
        return read_csv_split(path, db_images)
    raise GeolocError(f"{path}: unknown dataset format (expected a folder, a .mat or a .csv file)")
