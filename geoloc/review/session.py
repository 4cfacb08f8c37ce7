"""The set of photos under review: each located answer with an id, its decision, and the
selections the page asks for (a page of rows, every ``high``, a folder, a day).

Ids are the only handle the page has on a photo: the server opens the files of this set, by
id, and never a path that came with a request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from geoloc.files import display_path
from geoloc.locating.results import LocateResult
from geoloc.review.decisions import ACCEPTED, CORRECTED, REJECTED, Decision, Decisions


@dataclass
class Item:
    id: int
    result: LocateResult
    key: str  # the resolved path: the decision's key

    @property
    def folder(self) -> str:
        return display_path(os.path.dirname(os.fspath(self.result.query)))

    @property
    def day(self) -> str:
        return (self.result.taken_at or "")[:10]


def rests_on(r: LocateResult) -> str:
    """What the estimate rests on, in one line of words."""
    e = r.estimate
    if e is None:
        return r.error or "not located"
    parts = [f"{e.support} of {e.considered} candidates agree ({e.agreement:.0%} of the weight)"]
    if e.verification:
        top = r.candidates[0] if r.candidates else None
        inl = f", {top.inliers} consistent matches" if top is not None and top.inliers is not None else ""
        parts.append(f"top candidate {e.verification}{inl}")
    kinds = [k for k in e.evidence if k != "visual"]
    if kinds:
        parts.append("also " + ", ".join(kinds))
    return "; ".join(parts)


class ReviewSet:
    """The photos of one review and their decisions (kept in :class:`Decisions` as they are made)."""

    def __init__(self, results: Iterable[LocateResult], decisions: Decisions, again: bool = False):
        self.decisions = decisions
        known = decisions.all()
        self.items: list[Item] = []
        self.left_out = 0  # settled earlier: not proposed again
        seen: set[str] = set()
        for r in results:
            if r.estimate is None:
                continue
            key = os.path.realpath(r.query)
            if key in seen:
                continue
            seen.add(key)
            d = known.get(key)
            if d is not None and d.settled and not again:
                self.left_out += 1
                continue
            self.items.append(Item(len(self.items), r, key))
        self._by_id = {i.id: i for i in self.items}

    def get(self, item_id: int) -> Item | None:
        return self._by_id.get(item_id)

    def decision_of(self, item: Item, known: dict[str, Decision] | None = None) -> Decision | None:
        return (known if known is not None else self.decisions.all()).get(item.key)

    # -- selections --------------------------------------------------------------------------

    def select(self, confidence: str | None = None, folder: str | None = None, day: str | None = None,
               state: str | None = None) -> list[Item]:
        """Items matching every filter given; ``state``: "open" (no decision yet) or a decision."""
        known = self.decisions.all() if state else {}
        out = []
        for i in self.items:
            if confidence and i.result.estimate.confidence != confidence:
                continue
            if folder and i.folder != folder:
                continue
            if day and i.day != day:
                continue
            if state:
                d = known.get(i.key)
                if (d.decision if d else "open") != state:
                    continue
            out.append(i)
        return out

    def facets(self) -> dict:
        """The values the page's filters offer, with counts."""
        def counted(values) -> list:
            counts: dict[str, int] = {}
            for v in values:
                counts[v] = counts.get(v, 0) + 1
            return sorted(counts.items())

        return {"confidence": counted(i.result.estimate.confidence for i in self.items),
                "folder": counted(i.folder for i in self.items),
                "day": counted(i.day for i in self.items if i.day)}

    # -- decisions ---------------------------------------------------------------------------

    def decide(self, item_ids: list[int], kind: str, lat: float | None = None, lon: float | None = None) -> int:
        items = [self._by_id[i] for i in item_ids if i in self._by_id]
        if kind == "open":
            self.decisions.undecide([i.key for i in items])
        else:
            self.decisions.decide([(i.key, kind, lat, lon) for i in items])
        return len(items)

    def pending(self) -> list[tuple[Item, Decision]]:
        """Accepted and corrected photos not written yet."""
        known = self.decisions.all()
        return [(i, d) for i in self.items if (d := known.get(i.key)) is not None
                and d.decision in (ACCEPTED, CORRECTED) and d.applied_at is None]

    def counts(self) -> dict:
        known = self.decisions.all()
        out = {"total": len(self.items), "open": 0, ACCEPTED: 0, REJECTED: 0, CORRECTED: 0, "applied": 0}
        for i in self.items:
            d = known.get(i.key)
            out[d.decision if d else "open"] += 1
            if d is not None and d.applied_at:
                out["applied"] += 1
        return out


def locate_for_review(db: Path, queries: list[Path], unlocated: bool, config=None,
                      on_progress: Callable[[int], None] | None = None,
                      on_total: Callable[[int], None] | None = None) -> list[LocateResult]:
    """Locate the queries (and, with ``unlocated``, the database's photos without GPS) once,
    for the page to show."""
    from geoloc.locating.locator import Locator

    with Locator(db, config) as locator:
        paths = list(queries)
        if unlocated:
            known = {os.path.realpath(p) for p in paths}
            paths += [p for p in locator.unlocated_photos() if os.path.realpath(p) not in known]
        if on_total is not None:
            on_total(len(paths))
        if not paths:
            return []
        return locator.locate(paths, on_progress=on_progress)


def item_json(item: Item, decision: Decision | None, top: int = 5) -> dict:
    """A row of the page. Texts from file names and EXIF go out as JSON strings, which the page
    only ever puts into the document as text (``textContent``), never as HTML."""
    r, e = item.result, item.result.estimate
    return {
        "id": item.id,
        "name": display_path(os.path.basename(os.fspath(r.query))),
        "path": display_path(r.query),
        "folder": item.folder,
        "taken_at": r.taken_at,
        "lat": e.lat, "lon": e.lon, "radius_m": e.radius_m,
        "confidence": e.confidence,
        "rests_on": rests_on(r),
        "warnings": list(r.warnings),
        "own_gps": r.query_gps is not None,
        "decision": decision.decision if decision else "open",
        "decided_lat": decision.lat if decision else None,
        "decided_lon": decision.lon if decision else None,
        "applied": bool(decision and decision.applied_at),
        "candidates": [{"rank": c.rank, "name": display_path(os.path.basename(os.fspath(c.path))),
                        "path": display_path(c.path), "lat": c.lat, "lon": c.lon, "score": round(c.score, 4),
                        "inliers": c.inliers, "distance_m": None if c.distance_m is None else round(c.distance_m, 1)}
                       for c in r.candidates[:top]],
    }
