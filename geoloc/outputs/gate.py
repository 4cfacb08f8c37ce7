"""The confidence gate every writer of positions honours (``--min-confidence``): one rule, so that
the CSV, the sidecars and the photos' own EXIF never disagree about what is sure enough."""

from __future__ import annotations

from typing import Sequence

from geoloc.locating.estimate import meets


def confidence_gate(results: Sequence, minimum: str) -> tuple[list, list]:
    """(results to write, located results below ``minimum``); a result without an estimate
    goes with the first (each writer says what it does with those)."""
    kept, below = [], []
    for r in results:
        if r.estimate is not None and not meets(r.estimate.confidence, minimum):
            below.append(r)
        else:
            kept.append(r)
    return kept, below
