"""Pittsburgh 250k/30k and Tokyo 24/7 ground truth: the ``dbStruct`` MATLAB files of the NetVLAD
release, read into a :class:`~geoloc.evaluation.split.Split`.

Their UTM coordinates carry no zone; the zone of a known city is taken from the file's name or
label, else from ``--utm-zone``. Image names are relative and sometimes name a ``.png`` shipped
as ``.jpg`` (Tokyo 24/7): each is looked up where the releases put them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from geoloc.errors import GeolocError, PhotoError, UsageError
from geoloc.evaluation.split import Positions, Split
from geoloc.geo import utm_to_latlon

# Street-level benchmarks whose .mat files carry UTM without a zone: the zone of their city.
KNOWN_UTM_ZONES = {"pitts": (17, True), "tokyo": (54, True)}


def _mat_field(struct, name: str):
    value = getattr(struct, name, None)
    if value is None and hasattr(struct, "_fieldnames"):
        for f in struct._fieldnames:
            if f.lower() == name.lower():
                return getattr(struct, f)
    return value


def _as_names(value) -> list[str]:
    arr = np.atleast_1d(np.asarray(value, dtype=object)).ravel()
    out = []
    for v in arr:
        while isinstance(v, np.ndarray):
            v = v.ravel()[0] if v.size else ""
        out.append(str(v).strip())
    return out


def _as_utm(value, n: int, what: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 1 and arr.size == 2 and n == 1:
        arr = arr.reshape(2, 1)
    if arr.ndim == 2 and arr.shape == (2, n):
        return arr.T.copy()
    if arr.ndim == 2 and arr.shape == (n, 2):
        return arr.copy()
    raise ValueError(f"{what} has shape {arr.shape}, expected 2×{n}")


def parse_utm_zone(text: str) -> tuple[int, bool]:
    """'17T' / '17' / '54S' / '33s' → (zone, northern); letters N–X are northern bands."""
    t = text.strip().upper()
    digits = "".join(c for c in t if c.isdigit())
    letter = t[len(digits):] if t.startswith(digits) else ""
    if not digits or not 1 <= int(digits) <= 60 or len(letter) > 1 or (letter and not letter.isalpha()):
        raise UsageError(f"--utm-zone {text!r}: expected a zone number and band letter such as 17T")
    return int(digits), (letter >= "N") if letter else True


def read_dbstruct(
    mat_path: Path,
    images_root: Path | None = None,
    queries_root: Path | None = None,
    utm_zone: str | None = None,
) -> Split:
    """A Pittsburgh / Tokyo 24/7 ``dbStruct`` .mat file and the folder its images live in.

    Image names are relative (``000/000000_pitch1_yaw1.jpg``); the database images are looked up
    under ``images_root`` (default: the .mat file's folder) and the queries under ``queries_root``
    (default: the first of ``queries_real``, ``query``, ``queries`` under the images root that
    exists). Files that are missing are reported and skipped.
    """
    mat_path = Path(mat_path)
    try:
        from scipy.io import loadmat

        mat = loadmat(str(mat_path), squeeze_me=True, struct_as_record=False)
    except FileNotFoundError:
        raise GeolocError(f"{mat_path}: no such file") from None
    except NotImplementedError:
        raise GeolocError(f"{mat_path}: MATLAB v7.3 (HDF5) files are not supported; re-save it with -v7") from None
    except Exception as exc:  # noqa: BLE001 - scipy raises many types for a damaged file
        raise GeolocError(f"{mat_path}: not a readable MATLAB .mat file ({exc})") from None
    struct = mat.get("dbStruct")
    if struct is None:
        raise GeolocError(f"{mat_path}: no 'dbStruct' variable (found: {', '.join(k for k in mat if not k.startswith('__')) or 'nothing'})")
    if isinstance(struct, np.ndarray):
        struct = struct.ravel()[0]
    fields = {}
    for name in ("dbImageFns", "utmDb", "qImageFns", "utmQ"):
        value = _mat_field(struct, name)
        if value is None:
            raise GeolocError(f"{mat_path}: dbStruct has no field {name}")
        fields[name] = value
    try:
        db_names = _as_names(fields["dbImageFns"])
        q_names = _as_names(fields["qImageFns"])
        db_utm = _as_utm(fields["utmDb"], len(db_names), "utmDb")
        q_utm = _as_utm(fields["utmQ"], len(q_names), "utmQ")
    except ValueError as exc:
        raise GeolocError(f"{mat_path}: {exc}") from None
    thr = _mat_field(struct, "posDistThr")
    threshold = float(np.asarray(thr, dtype=np.float64).ravel()[0]) if thr is not None and np.size(thr) else None
    label = " ".join(
        str(_mat_field(struct, f)) for f in ("dataset", "whichSet") if isinstance(_mat_field(struct, f), str)
    )

    zone: tuple[int, bool] | None = parse_utm_zone(utm_zone) if utm_zone else None
    if zone is None:
        hint = f"{label} {mat_path.name}".lower()
        zone = next((z for key, z in KNOWN_UTM_ZONES.items() if key in hint), None)

    root = Path(images_root) if images_root is not None else mat_path.parent
    if queries_root is None:
        queries_root = next((root / d for d in ("queries_real", "query", "queries") if (root / d).is_dir()), root)
    problems: list[PhotoError] = []

    def side(names: list[str], utm: np.ndarray, base: Path, what: str) -> tuple[list[Path], Positions]:
        keep, paths = [], []
        for i, fn in enumerate(names):
            found = _resolve_image(base, fn)
            if found is None:
                problems.append(PhotoError(base / fn, f"{what} image listed in {mat_path.name} not found"))
                continue
            keep.append(i)
            paths.append(found)
        utm_k = utm[np.asarray(keep, dtype=np.int64)] if keep else np.zeros((0, 2))
        lat = np.full(len(keep), np.nan)
        lon = np.full(len(keep), np.nan)
        if zone is not None:
            for j, (e, n) in enumerate(utm_k):
                lat[j], lon[j] = utm_to_latlon(float(e), float(n), zone[0], zone[1])
        return paths, Positions(lat, lon, utm_k)

    db_paths, db = side(db_names, db_utm, root, "database")
    q_paths, q = side(q_names, q_utm, Path(queries_root), "query")
    if not db_paths:
        raise GeolocError(
            f"{mat_path}: none of its {len(db_names)} database images were found under {root} "
            "(pass --images-root, the folder that holds them)"
        )
    if not q_paths:
        raise GeolocError(
            f"{mat_path}: none of its {len(q_names)} query images were found under {queries_root} "
            "(pass --queries-root, the folder that holds them)"
        )
    same = {os.path.realpath(p) for p in db_paths} & {os.path.realpath(p) for p in q_paths}
    if same:
        raise GeolocError(
            f"{mat_path}: {len(same)} query names resolve to database images (e.g. {min(same)}); "
            "pass --queries-root, the folder that holds the query images"
        )
    name = mat_path.stem
    return Split(name, "dbstruct", str(mat_path.resolve()), db_paths, db, q_paths, q, threshold, problems)


def _resolve_image(base: Path, name: str) -> Path | None:
    """The file a .mat entry names; Tokyo 24/7 lists .png names for images shipped as .jpg."""
    rel = Path(name.replace("\\", "/"))
    candidates = [base / rel, base / "images" / rel, base / "database" / rel, base / rel.name]
    for c in candidates:
        if c.is_file():
            return c.absolute()
    for c in candidates[:3]:
        for suffix in (".jpg", ".png", ".jpeg"):
            alt = c.with_suffix(suffix)
            if alt != c and alt.is_file():
                return alt.absolute()
    return None
