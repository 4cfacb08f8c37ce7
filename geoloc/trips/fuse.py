"""One estimate from what the pixels say and what the clock says.

Time and appearance fail in different ways: a clock can be wrong (another zone, a photo copied
from a friend's camera) and pixels can be fooled (a look-alike street, a night photo). Where they
agree, the estimate takes the tighter of the two and the stronger confidence; where they
disagree, it says so and trusts neither fully: the pixels keep the place (they are the photo's
own content) at a lower confidence, unless they found no reliable match at all, when the time
decides. A place from time alone is ``high`` only when its camera's clock is known to the second
and a fix is minutes away, since a radius from time is then a bound on how far anyone walks.
"""

from __future__ import annotations

from typing import Optional

from geoloc.locating.estimate import Estimate
from geoloc.formatting import format_distance
from geoloc.geo import haversine_m
from geoloc.trips.timeline import TimePlace

#: A place from time alone is ``high`` within this many seconds of a fix, ``medium`` beyond.
HIGH_GAP_S = 600.0
#: Estimates closer than their radii plus this agree (metres): GPS in the archive is not exact.
AGREE_SLACK_M = 25.0

_RANK = {"low": 0, "medium": 1, "high": 2}


def time_confidence(place: TimePlace, certain: bool) -> str:
    if not certain:
        return "low"
    return "high" if place.gap_s <= HIGH_GAP_S else "medium"


def from_time(place: TimePlace, certain: bool) -> Estimate:
    """An estimate resting on time alone."""
    return Estimate(lat=place.lat, lon=place.lon, radius_m=place.radius_m, support=len(place.between),
                    agreement=1.0, considered=0, confidence=time_confidence(place, certain), warnings=[],
                    verification=None, evidence=[place.evidence], time_gap_s=place.gap_s)


#: A fix this close in time (seconds) outweighs pixels that found no verified match.
DECISIVE_GAP_S = 60.0


def fuse(visual: Optional[Estimate], place: TimePlace, certain: bool, describe=str,
         independent: bool = True) -> Estimate:
    """The estimate from both; ``describe`` names a fix's label for a warning. ``independent``
    is False when the clock that placed the photo in time was found from this photo's own
    pixels: time then may only lower the confidence, never raise it."""
    timed = from_time(place, certain)
    if visual is None:
        return timed
    if not independent:
        timed.confidence = min(timed.confidence, visual.confidence, key=_RANK.__getitem__)
    apart = float(haversine_m(visual.lat, visual.lon, place.lat, place.lon))
    visual.time_gap_s = place.gap_s
    if visual.confidence == "low" and apart <= visual.radius_m + place.radius_m + AGREE_SLACK_M:
        return timed  # the pixels found no reliable match: they neither help nor contradict
    if apart <= visual.radius_m + place.radius_m + AGREE_SLACK_M:
        tighter = timed if place.radius_m < visual.radius_m else visual
        fused = Estimate(lat=tighter.lat, lon=tighter.lon, radius_m=min(visual.radius_m, place.radius_m),
                         support=visual.support, agreement=visual.agreement, considered=visual.considered,
                         confidence=max(visual.confidence, timed.confidence, key=_RANK.__getitem__),
                         warnings=[] if _RANK[timed.confidence] >= _RANK[visual.confidence] else list(visual.warnings),
                         verification=visual.verification, extent_m=visual.extent_m,
                         evidence=["visual", place.evidence], time_gap_s=place.gap_s)
        return fused
    near = describe(place.between[0]) if place.between else "the trip"
    if independent and visual.confidence == "medium" and visual.verification != "verified" and certain \
            and place.gap_s <= DECISIVE_GAP_S:
        # Pixels that disagree among themselves or verify nothing, against a fix seconds away.
        timed.confidence = "medium"
        timed.warnings = [f"the best visual match is {format_distance(apart)} from where the clock puts it "
                          f"(near {near}, {place.gap_s:.0f} s from a fix): placed by time"]
        return timed
    if visual.confidence == "low":
        timed.warnings = [f"the best visual match is {format_distance(apart)} from where the clock puts it "
                          f"(near {near}): placed by time"]
        if timed.confidence == "high" and visual.verification == "verified":
            timed.confidence = "medium"
        return timed
    lowered = "medium" if visual.confidence == "high" else "low"
    visual.confidence = lowered
    visual.warnings = list(visual.warnings) + [
        f"the clock puts it {format_distance(apart)} away (near {near}, "
        f"{format_distance(place.radius_m)} either way): a wrong camera clock, or a photo from elsewhere"]
    visual.evidence = ["visual"]
    return visual
