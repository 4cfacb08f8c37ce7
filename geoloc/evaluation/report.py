"""Per-query CSV and the recall@N curve: the evidence behind the summary figures.

A recall figure alone hides which queries fail; the CSV lets a user open the failures in a
viewer, and the curve shows how quickly recall saturates as N grows (the figure every
place-recognition paper plots).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from geoloc.errors import GeolocError
from geoloc.evaluation.metrics import QueryOutcome, first_hit_rank


def csv_header(top_k: int, with_model: bool = False) -> list[str]:
    cols = ["model"] if with_model else []
    cols += [
        "query",
        "true_lat",
        "true_lon",
        "estimate_lat",
        "estimate_lon",
        "radius_m",
        "error_m",
        "first_correct_rank",
    ]
    for i in range(1, top_k + 1):
        cols += [f"top{i}_path", f"top{i}_distance_m", f"top{i}_score"]
    cols.append("error")
    return cols


def _num(v: float | None, digits: int) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return f"{v:.{digits}f}"


Section = tuple[str | None, Sequence[QueryOutcome], float]


def write_query_csv(sections: Sequence[Section], out: TextIO, top_k: int) -> None:
    """One row per query: truth, estimate, error and the top-k candidates with their distances.

    ``sections``: (model name or None, outcomes, threshold in metres); with model names (a
    ``--compare`` run) a leading ``model`` column tells the rows apart.
    """
    with_model = any(name is not None for name, _, _ in sections)
    w = csv.writer(out, lineterminator="\n")
    w.writerow(csv_header(top_k, with_model))
    for name, outcomes, threshold_m in sections:
        for o in outcomes:
            rank = first_hit_rank(o.truth_distances(), threshold_m) if o.scored else None
            row = [name or ""] if with_model else []
            row += [
                o.query,
                _num(o.true_lat, 7),
                _num(o.true_lon, 7),
                _num(o.estimate_lat, 7),
                _num(o.estimate_lon, 7),
                _num(o.radius_m, 1),
                _num(o.error_m, 2),
                "" if rank is None else str(rank),
            ]
            for i in range(top_k):
                if i < len(o.candidates):
                    c = o.candidates[i]
                    row += [c.path, _num(c.truth_distance_m, 2), _num(c.score, 4)]
                else:
                    row += ["", "", ""]
            row.append(o.error or "")
            w.writerow(row)


def save_query_csv(sections: Sequence[Section], path: Path, top_k: int) -> None:
    buf = io.StringIO()
    write_query_csv(sections, buf, top_k)
    _write_text(Path(path), buf.getvalue())


def _write_text(path: Path, text: str) -> None:
    from geoloc.files import atomic_write

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text, streams=True)
    except OSError as exc:
        raise GeolocError(f"{path}: cannot write ({exc.strerror or exc})") from None


def plot_recall_curves(curves: Mapping[str, np.ndarray], path: Path, threshold_m: float, title: str | None = None) -> None:
    """Recall@N against N, one line per model, saved as a PNG (headless: the Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(6, 4.2), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    longest = 1
    # Curves often coincide (every model at 100 % from some N on): distinct line styles and
    # markers keep each one visible where it lies under another.
    styles = ("-", "--", "-.", ":")
    markers = ("o", "s", "^", "D", "v", "x", "+")
    for i, (name, curve) in enumerate(curves.items()):
        curve = np.asarray(curve, dtype=np.float64)
        if curve.size == 0 or not np.isfinite(curve).any():
            continue
        n = np.arange(1, len(curve) + 1)
        longest = max(longest, len(curve))
        ax.plot(n, 100.0 * curve, linestyle=styles[i % len(styles)], marker=markers[i % len(markers)],
                markersize=4, linewidth=1.5, label=name, fillstyle="none" if i % 2 else "full")
    ax.set_xlabel("N (number of top database candidates)")
    ax.set_ylabel(f"Recall@N (%), within {threshold_m:g} m")
    # A little room past 0-100 % and 1-N: curves that saturate at 100 % (common on easy sets)
    # and the recall@1 markers would otherwise be drawn on the frame and half hidden.
    ax.set_ylim(-2, 102)
    ax.set_yticks(range(0, 101, 20))
    ax.set_xlim(0.5, longest + 0.5)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    if curves:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    from geoloc.files import replacing

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path, streams=True) as tmp:  # a FIFO or /dev/null stays one
            fig.savefig(str(tmp), format="png")
    except OSError as exc:
        raise GeolocError(f"{path}: cannot write ({exc.strerror or exc})") from None
