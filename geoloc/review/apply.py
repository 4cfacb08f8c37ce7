"""Applying a review: the accepted and corrected positions written through geoloc's own writers.

Nothing here writes a photo itself. EXIF goes through :func:`geoloc.outputs.writeback.write_estimates`
(undo journal first, pixels compared, one rename per photo), so ``geoloc undo-exif`` takes a
review back like any ``locate --write-exif`` run; sidecars through
:func:`geoloc.outputs.export.write_sidecars`. The user has looked at each position, so the
confidence bar is theirs: every accepted estimate is written whatever its level.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from geoloc.files import display_path
from geoloc.review.decisions import CORRECTED
from geoloc.review.session import ReviewSet

#: The radius written for a position the user placed by hand: a pin dropped on a map is good
#: to a street's width, whatever the estimate's circle was.
HAND_PLACED_RADIUS_M = 15.0


@dataclass
class ApplyReport:
    written: list[str] = field(default_factory=list)  # photos (display paths)
    sidecars: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "photo: why", one line each
    journal: str | None = None

    def to_json(self) -> dict:
        return {"written": self.written, "sidecars": self.sidecars, "problems": self.problems,
                "journal": self.journal}


def reviewed_result(result, decision):
    """The located answer as the user decided it: a correction moves the estimate."""
    r = copy.copy(result)
    r.estimate = copy.copy(result.estimate)
    if decision.decision == CORRECTED:
        r.estimate.lat, r.estimate.lon = float(decision.lat), float(decision.lon)
        r.estimate.radius_m = HAND_PLACED_RADIUS_M
        r.estimate.evidence = ["by hand"]
    return r


def apply_decisions(review: ReviewSet, exif: bool = True, xmp: bool = False, xmp_name: str = "stem",
                    backend: str | None = None) -> ApplyReport:
    """Write every pending accept and correction; mark those written as applied."""
    from geoloc.outputs.export import write_sidecars
    from geoloc.outputs.writeback import WriteOptions, write_estimates

    report = ApplyReport()
    pending = review.pending()
    if not pending or not (exif or xmp):
        return report
    results = [reviewed_result(item.result, d) for item, d in pending]
    key_of = {id(r): item.key for r, (item, _) in zip(results, pending)}
    done: dict[str, list[str]] = {}
    if exif:
        out = write_estimates(results, WriteOptions(min_confidence="low", backend=backend))
        written = {str(p) for p in out.written}
        for r in results:
            if str(r.query) in written:
                done.setdefault(key_of[id(r)], []).append("exif")
                report.written.append(display_path(r.query))
        for photo in out.own_position:
            report.problems.append(f"{display_path(photo)}: has a position of its own; left as it is")
        for photo, why in out.unwritable + out.failed:
            report.problems.append(f"{display_path(photo)}: EXIF not written: {why}")
        report.journal = display_path(out.journal) if out.journal else None
    if xmp:
        side = write_sidecars(results, xmp_name)
        by_photo = {str(t.parent / t.stem): t for t in side.written}
        for r in results:
            stem = str(r.query.parent / r.query.stem) if xmp_name == "stem" else str(r.query)
            if stem in by_photo:
                done.setdefault(key_of[id(r)], []).append("xmp")
                report.sidecars.append(display_path(by_photo[stem]))
        for photo, why in side.skipped:
            report.problems.append(f"{display_path(photo)}: no sidecar written: {why}")
    by_where: dict[str, list[str]] = {}
    for key, where in done.items():
        by_where.setdefault("+".join(where), []).append(key)
    for where, keys in by_where.items():
        review.decisions.mark_applied(keys, where)
    return report
