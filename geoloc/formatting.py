"""How geoloc shows numbers: JSON-safe rounding, and distances in metres or kilometres.

One formatter each, so the same distance reads the same in the locate table, the eval summary
and the map, and the same value has the same digits in every JSON object.
"""

from __future__ import annotations

import math


def json_number(value: float | None, digits: int) -> float | None:
    """``value`` rounded for JSON; None for a missing, infinite or NaN value (JSON has none)."""
    if value is None:
        return None
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def count(n: int, noun: str, nouns: str | None = None) -> str:
    """``1 photo``, ``2 photos``, ``0 photos``: a number with its noun in the right number."""
    return f"{n} {noun if n == 1 else (nouns or noun + 's')}"


def format_distance(metres: float | None, missing: str = "–") -> str:
    """A distance for people: ``4.7 m``, ``1,234 m``, ``12.3 km``, ``1,234 km``.

    A decimal below 10 m, where it still means something (the estimate's error on a street);
    whole metres up to 10 km; kilometres beyond, with a decimal up to 100 km.
    """
    if metres is None or not math.isfinite(metres):
        return missing
    if metres < 10:
        return f"{metres:.1f} m"
    if metres < 10_000:
        return f"{metres:,.0f} m"
    if metres < 100_000:
        return f"{metres / 1000:,.1f} km"
    return f"{metres / 1000:,.0f} km"


def camera_name(make: str | None, model: str | None, serial: str | None = None) -> str:
    """How a camera body is named to people and in ``--clock NAME=…``: "NIKON COOLPIX P6000",
    with "#serial" when it has one; Make is not repeated when Model starts with it
    ("Canon EOS 5D"); a photo without either is "unknown camera"."""
    model_text = model or ""
    if make and model_text.lower().startswith(make.lower()):
        base = model_text
    else:
        base = " ".join(x for x in (make, model) if x)
    base = base or "unknown camera"
    return f"{base} #{serial}" if serial else base


def coordinate_digits(radius_m: float | None) -> int:
    """Decimals of a latitude or longitude worth showing for a position known within
    ``radius_m``: six decimals (0.1 m) under a 1 km circle would claim what nobody knows.

    The last digit's step (about 111 km × 10⁻ᵈ) stays under a fifth of the radius; 1 to 6.
    """
    if radius_m is None or not math.isfinite(radius_m) or radius_m <= 0:
        return 6
    digits = math.ceil(math.log10(111_000 * 5 / radius_m))
    return min(max(digits, 1), 6)
