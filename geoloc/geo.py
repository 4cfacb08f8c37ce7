"""Distances on the Earth and local metric coordinates.

Position estimates cluster candidates in metres, so everything here works on a local tangent
plane (equirectangular around a reference point); at the scale of a photo archive's neighbourhood
(kilometres) its error is far below GPS noise.
"""

from __future__ import annotations

import math

import numpy as np

EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG)


def haversine_m(lat1, lon1, lat2, lon2):
    """Great-circle distance in metres; works on scalars and numpy arrays alike."""
    lat1, lon1, lat2, lon2 = (np.radians(np.asarray(v, dtype=np.float64)) for v in (lat1, lon1, lat2, lon2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    d = 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    return float(d) if np.ndim(d) == 0 else d


def to_local_m(lat, lon, lat0: float, lon0: float) -> np.ndarray:
    """Project lat/lon to east/north metres around (lat0, lon0); returns an (N, 2) array."""
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    dlon = (lon - lon0 + 180.0) % 360.0 - 180.0  # across the antimeridian
    east = np.radians(dlon) * EARTH_RADIUS_M * math.cos(math.radians(lat0))
    north = np.radians(lat - lat0) * EARTH_RADIUS_M
    return np.stack([east, north], axis=-1)


def from_local_m(east, north, lat0: float, lon0: float) -> tuple[float, float]:
    """Inverse of :func:`to_local_m` for one point."""
    lat = lat0 + math.degrees(north / EARTH_RADIUS_M)
    coslat = max(math.cos(math.radians(lat0)), 1e-12)
    lon = lon0 + math.degrees(east / (EARTH_RADIUS_M * coslat))
    lon = (lon + 180.0) % 360.0 - 180.0
    return lat, lon


def is_valid_position(lat, lon) -> bool:
    """A usable GPS fix: finite, in range, and not the (0, 0) that broken devices write."""
    if lat is None or lon is None:
        return False
    try:
        lat = float(lat)
        lon = float(lon)
    except (TypeError, ValueError):
        return False
    if not (math.isfinite(lat) and math.isfinite(lon)):
        return False
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return False
    return not (lat == 0.0 and lon == 0.0)


def utm_to_latlon(easting: float, northing: float, zone: int, northern: bool = True) -> tuple[float, float]:
    """UTM (WGS 84) to latitude/longitude, for benchmark files that store only UTM.

    Krüger series as in the usual USGS formulation; accurate to well under a metre inside a zone.
    """
    k0 = 0.9996
    a = 6378137.0
    f = 1 / 298.257223563
    e2 = f * (2 - f)
    ep2 = e2 / (1 - e2)
    x = easting - 500000.0
    y = northing if northern else northing - 10000000.0
    m = y / k0
    mu = m / (a * (1 - e2 / 4 - 3 * e2**2 / 64 - 5 * e2**3 / 256))
    e1 = (1 - math.sqrt(1 - e2)) / (1 + math.sqrt(1 - e2))
    phi1 = (
        mu
        + (3 * e1 / 2 - 27 * e1**3 / 32) * math.sin(2 * mu)
        + (21 * e1**2 / 16 - 55 * e1**4 / 32) * math.sin(4 * mu)
        + (151 * e1**3 / 96) * math.sin(6 * mu)
        + (1097 * e1**4 / 512) * math.sin(8 * mu)
    )
    n1 = a / math.sqrt(1 - e2 * math.sin(phi1) ** 2)
    t1 = math.tan(phi1) ** 2
    c1 = ep2 * math.cos(phi1) ** 2
    r1 = a * (1 - e2) / (1 - e2 * math.sin(phi1) ** 2) ** 1.5
    d = x / (n1 * k0)
    lat = phi1 - (n1 * math.tan(phi1) / r1) * (
        d**2 / 2
        - (5 + 3 * t1 + 10 * c1 - 4 * c1**2 - 9 * ep2) * d**4 / 24
        + (61 + 90 * t1 + 298 * c1 + 45 * t1**2 - 252 * ep2 - 3 * c1**2) * d**6 / 720
    )
    lon = (
        d
        - (1 + 2 * t1 + c1) * d**3 / 6
        + (5 - 2 * c1 + 28 * t1 - 3 * c1**2 + 8 * ep2 + 24 * t1**2) * d**5 / 120
    ) / math.cos(phi1)
    lon0 = math.radians((zone - 1) * 6 - 180 + 3)
    return math.degrees(lat), math.degrees(lon0 + lon)
