"""Frames of one trip in order: each frame's place must make a plausible path with its neighbours.

A dashcam, a walk shot every few seconds, a burst: consecutive frames are taken a few metres
apart, so a frame whose best visual match is a look-alike 3 km away, between two frames matched
to the same street, is almost surely on that street, at the candidate that is there. Each frame
keeps its top candidates as the places it may be; a path through them is scored by how well the
pixels match (the candidates' scores, as the estimate weighs them) and by how plausible each step
is (its length against the trip's usual step, or against what the time between the frames allows
at any speed). The best path (Viterbi) may move a frame to another of its candidates; it never
invents a place no candidate shows.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from geoloc.locating.estimate import EstimateConfig, estimate_position
from geoloc.geo import haversine_m, to_local_m

#: Candidates per frame the path may go through.
STATES = 10
#: The least step scale (metres): GPS in the database is not finer.
MIN_STEP_M = 10.0
#: The log-cost of a step nobody takes (the transition's cap).
IMPLAUSIBLE = 25.0
#: Faster than this (m/s) nobody travels between two photos of one trip on the ground.
MAX_SPEED_MPS = 60.0
#: What one rank down costs a candidate, in the estimate's log-weights.
RANK_COST = 0.5
#: The estimate's temperature is meant for one photo's candidates; across frames the pixels are
#: weighed this much more softly, so that neighbours can outvote a near tie.
EMISSION_SOFTENING = 3.0
#: How much a change of step between frames in name order costs, against the pixels.
STEADY = 1.0
#: Frames farther apart in time than this start a new sequence.
BREAK_S = 1800.0


@dataclass
class SequenceReport:
    sequences: int = 0
    frames: int = 0
    moved: int = 0


def natural_key(path: Path) -> tuple:
    """Name order as people count frames: ``img2`` before ``img10``, folder by folder."""
    parts = re.split(r"(\d+)", Path(path).name)
    return (os.fspath(Path(path).parent),) + tuple(int(p) if p.isdigit() else p.lower() for p in parts)


def smooth(results: Sequence, times: Sequence[Optional[float]] | None = None,
           config: EstimateConfig | None = None) -> SequenceReport:
    """Put each result of a sequence (in place) on the most plausible path through its
    candidates. ``times`` (seconds, any common origin; None where unknown) gives each frame's
    time; without it the frames are taken in name order, one sequence per folder."""
    config = config or EstimateConfig()
    report = SequenceReport()
    usable = [i for i, r in enumerate(results) if not r.error and r.candidates]
    if times is not None and all(times[i] is not None for i in usable):
        order = sorted(usable, key=lambda i: (times[i], natural_key(results[i].query)))
    else:
        times = None
        order = sorted(usable, key=lambda i: natural_key(results[i].query))
    for run in _runs(order, results, times):
        if len(run) < 3:
            continue
        report.sequences += 1
        report.frames += len(run)
        report.moved += _smooth_run([results[i] for i in run], None if times is None else [times[i] for i in run],
                                    config)
    return report


def _runs(order: list[int], results: Sequence, times) -> list[list[int]]:
    runs: list[list[int]] = []
    for i in order:
        if runs:
            last = runs[-1][-1]
            new = (times[i] - times[last] > BREAK_S) if times is not None \
                else Path(results[i].query).parent != Path(results[last].query).parent
            if not new:
                runs[-1].append(i)
                continue
        runs.append([i])
    return runs


def _smooth_run(frames: list, times: Optional[list[float]], config: EstimateConfig) -> int:
    states = [f.candidates[:STATES] for f in frames]
    lat = [np.array([c.lat for c in s]) for s in states]
    lon = [np.array([c.lon for c in s]) for s in states]
    emit = [_emission(s, config.temperature) for s in states]
    # The usual step is first taken from the best candidates (some of them wrong), then from the
    # path found with it: the second path is judged by the steps of a plausible trip.
    path = _viterbi(lat, lon, emit, _step_scale(lat, lon), times)
    steps = [float(haversine_m(lat[k - 1][path[k - 1]], lon[k - 1][path[k - 1]], lat[k][path[k]], lon[k][path[k]]))
             for k in range(1, len(frames))]
    scale = max(MIN_STEP_M, float(np.median(steps)))
    path = _viterbi(lat, lon, emit, scale, times) if times is not None else _viterbi_steady(lat, lon, emit, scale)
    moved = 0
    for frame, choice in zip(frames, path):
        moved += _settle(frame, choice, config)
    return moved


def _viterbi(lat: list, lon: list, emit: list, scale: float, times: Optional[list[float]]) -> list[int]:
    """The most plausible path through the frames' candidates, one index per frame."""
    n = len(lat)
    score = emit[0].copy()
    back: list[np.ndarray] = []
    for k in range(1, n):
        d = _distances(lat, lon, k)
        trans = _step_costs(d, scale)
        if times is not None:  # faster than anyone travels between the two times: not at all
            too_fast = d > MIN_STEP_M + MAX_SPEED_MPS * abs(times[k] - times[k - 1])
            trans = np.where(too_fast, -IMPLAUSIBLE, trans)
        total = score[:, None] + trans
        back.append(np.argmax(total, axis=0))
        score = total.max(axis=0) + emit[k]
    path = [int(np.argmax(score))]
    for pointer in reversed(back):
        path.append(int(pointer[path[-1]]))
    path.reverse()
    return path


def _distances(lat: list, lon: list, k: int) -> np.ndarray:
    """Metres from each of frame ``k - 1``'s candidates to each of frame ``k``'s."""
    return haversine_m(lat[k - 1][:, None], lon[k - 1][:, None], lat[k][None, :], lon[k][None, :])


def _step_costs(d: np.ndarray, scale: float) -> np.ndarray:
    """Log-plausibility of steps of ``d`` metres: any step up to the trip's usual one is as
    plausible as standing still, a longer one less so, in units of that step."""
    return -np.minimum((np.maximum(d - scale, 0.0) / scale) ** 2, IMPLAUSIBLE)


def _viterbi_steady(lat: list, lon: list, emit: list, scale: float) -> list[int]:
    """:func:`_viterbi` for frames that carry no time, with a steady pace besides: a walk or a
    drive shot frame after frame moves about as far, the same way, from one frame to the next,
    so a path that jumps two steps ahead and then stands still costs (its change of step, in
    units of the usual step, squared; a stop or a turn costs about what two ranks of a
    candidate do). A state is a pair of consecutive frames' candidates."""
    xy = [to_local_m(la, lo, float(lat[0][0]), float(lon[0][0])) for la, lo in zip(lat, lon)]
    score = emit[0][:, None] + _step_costs(_distances(lat, lon, 1), scale) + emit[1][None, :]  # [a, b]
    back: list[np.ndarray] = []
    for k in range(2, len(lat)):
        change = xy[k][None, None, :, :] - 2.0 * xy[k - 1][None, :, None, :] + xy[k - 2][:, None, None, :]
        turn = -STEADY * np.minimum((np.linalg.norm(change, axis=-1) / scale) ** 2, IMPLAUSIBLE)  # [a, b, c]
        total = score[:, :, None] + turn
        back.append(np.argmax(total, axis=0))  # [b, c]: the best frame before, for each pair
        score = total.max(axis=0) + _step_costs(_distances(lat, lon, k), scale) + emit[k][None, :]
    last, now = np.unravel_index(int(np.argmax(score)), score.shape)
    path = [int(now), int(last)]
    for pointer in reversed(back):
        path.append(int(pointer[path[-1], path[-2]]))
    path.reverse()
    return path


def _emission(candidates, temperature: float) -> np.ndarray:
    """Each candidate's log-weight: the score that ordered it (re-ranking's, cosine plus
    geometric verification, where it was verified; the cosine alone behind those), against the
    frame's best, over the estimate's temperature; less a little per rank."""
    verified = [c.fused for c in candidates if c.fused is not None]
    floor = min(verified) if verified else None
    values = np.array([c.fused if c.fused is not None else (c.score if floor is None else min(c.score, floor) - 0.05)
                       for c in candidates], np.float64)
    return (values - values.max()) / max(temperature * EMISSION_SOFTENING, 1e-6) - RANK_COST * np.arange(len(candidates))


def _step_scale(lat: list[np.ndarray], lon: list[np.ndarray]) -> float:
    """The trip's usual step, from the frames themselves: the median distance between
    neighbours' best candidates (robust to a minority of wrong ones), never below what GPS in
    the database can tell apart."""
    steps = [float(haversine_m(lat[k - 1][0], lon[k - 1][0], lat[k][0], lon[k][0])) for k in range(1, len(lat))]
    typical = float(np.median(steps)) if steps else 0.0
    return max(MIN_STEP_M, typical)


def _settle(frame, choice: int, config: EstimateConfig) -> int:
    """The frame's answer on the path: unchanged when the path goes through its best candidate
    (the sequence then backs it); else that candidate ranked first and the estimate around it."""
    est = frame.estimate
    if choice == 0:
        if est is not None and "sequence" not in est.evidence:
            est.evidence = list(est.evidence) + ["sequence"]
        return 0
    chosen = frame.candidates[choice]
    rest = [c for i, c in enumerate(frame.candidates) if i != choice]
    frame.candidates = [chosen] + rest
    for rank, c in enumerate(frame.candidates, start=1):
        c.rank = rank
    top = frame.candidates[:STATES]
    scores = [c.score for c in top]
    new = estimate_position([c.lat for c in top], [c.lon for c in top], scores, config, anchor=0)
    if new is None:
        return 0
    before = est
    new.confidence = "medium" if before is None or before.confidence != "low" else "low"
    new.verification = None
    new.evidence = ["visual", "sequence"]
    new.warnings = [f"placed at candidate {os.fspath(Path(chosen.path).name)} (not the best match by its pixels): "
                    "the frames before and after it are there"]
    if before is not None:
        new.time_gap_s = before.time_gap_s
    frame.estimate = new
    for c in frame.candidates:
        c.distance_m = float(haversine_m(new.lat, new.lon, c.lat, c.lon))
    return 1

