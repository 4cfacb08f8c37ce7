"""Every kind of evidence a trip offers, brought to the answers of ``geoloc locate``.

After the pixels have spoken (each query's visual estimate), the trip is put together: the
archive's photos of known time (their own GPS time stamp, or a capture time from a camera whose
clock is known), the tracks, and each camera's clock, solved from all of it and from the
queries that the pixels placed confidently. Then each query with a capture time is placed by
time, and that place and the visual one are fused (:mod:`geoloc.trips.fuse`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

from geoloc.database.layout import TRACKS as TRACKS_FOLDER  # where ``index --track`` keeps copies
from geoloc.files import display_path
from geoloc.trips import clocks as clock_solver
from geoloc.trips.clocks import FEW_VISUAL, Clock
from geoloc.trips.fuse import from_time, fuse
from geoloc.trips.times import MODIFIED_ONLY, Camera, format_offset, iso_utc, reading_of, utc_seconds
from geoloc.trips.timeline import MAX_EXTRAPOLATE_S, MAX_GAP_S, Fixes, place

#: The kinds of evidence, as ``--evidence`` and the JSON's ``"evidence"`` name them.
KINDS = ("visual", "time", "track", "sequence")


@dataclass
class TripConfig:
    """What a trip may use. ``tracks``: GPX, KML/KMZ or Takeout files (besides those kept with
    the database); ``clocks``: ``--clock`` offsets by camera name; ``evidence``: the kinds used."""

    tracks: list[Path] = field(default_factory=list)
    clocks: dict[str, float] = field(default_factory=dict)
    evidence: tuple[str, ...] = KINDS
    sequence: bool = False
    #: Whether a query's own GPS time stamp may tell its camera's clock (``eval`` says no: there
    #: the queries' GPS is the ground truth being scored).
    query_gps_times: bool = True
    max_gap_s: float = MAX_GAP_S
    max_extrapolate_s: float = MAX_EXTRAPOLATE_S

    def uses(self, kind: str) -> bool:
        return kind in self.evidence


@dataclass
class TripReport:
    clocks: dict[str, Clock] = field(default_factory=dict)
    #: What ``--sequence`` did (:class:`geoloc.trips.sequence.SequenceReport`), None without it.
    sequence: object = None
    #: Queries placed (in part) by time: their UTC time fell within reach of a fix.
    in_range: int = 0
    #: Queries whose UTC time is known.
    timed_queries: int = 0


def apply(results: list, records: Sequence, config: TripConfig, *, tracks=None,
          warn: Callable[[str], None] = lambda line: None) -> TripReport:
    """Fuse each result's visual estimate with its place in time (in place); ``records`` are
    the database's photos, ``tracks`` an already read :class:`geoloc.trips.tracks.Track`."""
    report = TripReport()
    queries = {_key(r.query) for r in results if not r.error}
    # A query's own GPS never answers it: the archive is the other photos.
    archive = [r for r in records if _key(r.path) not in queries]
    archive_shots = clock_solver.shots_from_records(archive)
    shots = archive_shots + _query_shots(results, placed=False, gps_times=config.query_gps_times)
    use_time = config.uses("time")
    track = tracks if config.uses("track") else None

    clocks = clock_solver.solve(shots, config.clocks, fixes=None, timezones=False)
    fixes = _fixes(archive, clocks, track, use_time)
    if config.uses("visual"):  # cameras still unknown: align their confidently placed photos
        shots = archive_shots + _query_shots(results, placed=True, gps_times=config.query_gps_times)
        clocks = clock_solver.solve(shots, config.clocks, fixes=fixes if len(fixes) >= 2 else None)
        fixes = _fixes(archive, clocks, track, use_time)
    report.clocks = clocks
    if not len(fixes):
        return report
    for result in results:
        if result.error:
            continue
        camera = Camera.of(result)
        clock = clocks.get(camera.name) or Clock(camera)
        when = reading_of(result)
        if when is None:
            if result.taken_at and result.time_tag == "modified":
                result.notes = list(result.notes) + [MODIFIED_ONLY]
            continue
        utc = clock.known_utc(when)
        certain = utc is not None
        result.taken_at_utc = iso_utc(utc) if certain else None
        report.timed_queries += int(certain)
        if not certain:
            note = _unused_time_note(camera.name, clock)
            result.notes = list(result.notes) + [note]
            continue
        spot = place(fixes, utc, max_gap_s=config.max_gap_s, max_extrapolate_s=config.max_extrapolate_s,
                     uncertainty_s=float(clock.spread_s or 0.0))
        if spot is None:
            continue
        report.in_range += 1
        visual = result.estimate
        if visual is None and not config.uses("visual"):
            result.notes = [n for n in result.notes if not n.startswith(NOT_PLACED_BY_TIME)]
        # A clock found from this very photo's pixels says nothing new about where it was.
        independent = not (clock.source == "visual" and Path(result.query) in clock.voters)
        result.estimate = (fuse(visual, spot, certain, describe=_describe, independent=independent)
                           if visual is not None else from_time(spot, certain))
        _refresh_distances(result)
    return report


def _unused_time_note(name: str, clock: Clock) -> str:
    if clock.source == "timezone":
        return f"capture time not used: the clock of {name} is only guessed from the time zone"
    if clock.source == FEW_VISUAL:
        return (f"capture time not used: the clock of {name} ({format_offset(clock.offset_s)} ±{clock.spread_s:.0f} s) "
                f"rests on {clock.photos} photo{'s' if clock.photos > 1 else ''} placed by pixels alone; "
                f"confirm it with --clock")
    return f"capture time not used: the clock of {name} is unknown" + (f" ({clock.note})" if clock.note else "")


#: The note of an answer left without an estimate when the pixels are switched off.
NOT_PLACED_BY_TIME = "not placed by time"


def _visual_off(results: list) -> None:
    """``--evidence`` without ``visual``: the pixels' answers are dropped before time speaks, so
    that what is left is what time alone places (and eval measures exactly that)."""
    for result in results:
        if result.estimate is not None:
            result.estimate = None
            result.notes = list(result.notes) + [f"{NOT_PLACED_BY_TIME} (the visual estimate is switched off)"]


def _query_shots(results: Iterable, *, placed: bool, gps_times: bool = True) -> list:
    """Clock evidence from the queries: their time, camera, GPS time, and (``placed``) where the
    pixels put them with ``high`` confidence (verified: a ``medium`` look-alike must not set a
    clock)."""
    shots = []
    for r in results:
        if r.error:
            continue
        when = reading_of(r)
        if when is None:
            continue
        lat = lon = by = None
        radius = 25.0
        est = r.estimate
        if placed and est is not None and est.confidence == "high" and "visual" in est.evidence:
            lat, lon, by, radius = est.lat, est.lon, "visual", est.radius_m
        gps_utc = utc_seconds(r.gps_time) if gps_times else None
        shots.append(clock_solver.Shot(Path(r.query), Camera.of(r), when, gps_utc, lat, lon, by, radius))
    return shots


def _fixes(archive: Sequence, clocks: Mapping[str, Clock], track, use_time: bool) -> Fixes:
    """The trip's fixes: track points, and archive photos with a position and a known UTC time
    (their own GPS time stamp first: the fix's time, whatever the camera's clock)."""
    points = []
    if use_time:
        for r in archive:
            if not getattr(r, "located", False) or r.lat is None:
                continue
            utc = utc_seconds(getattr(r, "gps_time", None))
            if utc is None:
                clock = clocks.get(Camera.of(r).name)
                utc = clock.known_utc(reading_of(r)) if clock is not None else None
            if utc is not None:
                points.append((utc, float(r.lat), float(r.lon), getattr(r, "gps_accuracy_m", None), Path(r.path)))
    return Fixes.build(track, points)


def _key(path) -> str:
    return os.path.realpath(os.fspath(path))


def _describe(label) -> str:
    if label is None:
        return "the track"
    return display_path(Path(label).name)


def _refresh_distances(result) -> None:
    from geoloc.geo import haversine_m

    est = result.estimate
    for c in result.candidates:
        c.distance_m = float(haversine_m(est.lat, est.lon, c.lat, c.lon))


def cached_track(path: Path, warn: Callable[[str], None]):
    """A track kept with a database, read once: its clean fixes are cached under geoloc's cache
    by the file's content hash, so that every later ``locate`` loads them in milliseconds
    instead of parsing the file again (a 10⁶-point GPX takes half a minute to parse). A changed
    file has another hash; a cache that cannot be written or read is only slower."""
    import numpy as np

    from geoloc.files import replacing, sha256_file_cached
    from geoloc.paths import cache_dir
    from geoloc.trips.tracks import Track, read_track

    try:
        cache = cache_dir() / "tracks" / f"{sha256_file_cached(path)}.npz"
    except OSError:
        return read_track(path, warn=warn)
    try:
        with np.load(cache) as saved:
            return Track((path,), saved["t"], saved["lat"], saved["lon"], saved["segment"], saved["accuracy_m"])
    except (OSError, KeyError, ValueError):
        pass
    track = read_track(path, warn=warn)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with replacing(cache, durable=False) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, t=track.t, lat=track.lat, lon=track.lon, segment=track.segment,
                         accuracy_m=track.accuracy_m)
    except OSError:
        pass
    return track


def read_trip_tracks(kept: Sequence[Path], given: Sequence[Path], warn: Callable[[str], None]):
    """The tracks kept with the database and those given, merged; None for none. A kept file
    that is not (or no longer) a track is skipped with a warning; a given one is an error."""
    from geoloc.trips.tracks import TrackError, merge, read_track

    tracks = []
    for path in kept:
        try:
            tracks.append(cached_track(Path(path), warn))
        except TrackError as exc:
            warn(f"{exc} (kept with the database, skipped; remove it from that tracks folder)")
    for path in given:
        tracks.append(read_track(Path(path), warn=warn))
    if not tracks:
        return None
    return merge(tracks, warn=warn)


def kept_tracks(db: Path) -> list[Path]:
    """The tracks kept with a database (``geoloc index --track``), sorted by name."""
    folder = Path(db) / TRACKS_FOLDER
    try:
        return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError:
        return []


def apply_to_database(results: list, db: Path, config: TripConfig,
                      warn: Callable[[str], None] = lambda line: None) -> Optional[TripReport]:
    """:func:`apply` with the database's photos and its kept tracks; None when no query has a
    capture time (nothing for time to say, nothing read)."""
    from geoloc.database import Database

    sequence = order_frames(results) if config.sequence and config.uses("visual") else None
    if not config.uses("visual"):
        _visual_off(results)
    tracks = None
    if config.uses("track"):
        tracks = read_trip_tracks(kept_tracks(db), config.tracks, warn)
        if tracks is None and "track" in config.evidence and config.evidence != KINDS:
            warn("--evidence track: there is no track to use (give --track FILE, or keep one with "
                 "`geoloc index --track`)")
    if not any(r.taken_at for r in results if not r.error):
        return TripReport(sequence=sequence) if sequence is not None else None
    with Database.open(db) as database:
        records = database.photos()
    report = apply(results, records, config, tracks=tracks, warn=warn)
    report.sequence = sequence
    if tracks is not None and len(tracks) and report.timed_queries and not report.in_range:
        warn(f"the tracks span {iso_utc(float(tracks.t[0]))} to {iso_utc(float(tracks.t[-1]))} (UTC) and none of the "
             f"{report.timed_queries} capture times falls within reach of them: another day, or a camera clock "
             "that is off (see `geoloc clocks`, --clock)")
    return report


def order_frames(results: list):
    """``--sequence``: the frames on the most plausible path through their candidates
    (:mod:`geoloc.trips.sequence`), timed by their capture times when one camera took them all
    (its clock's offset does not matter between its own photos), else in name order."""
    from geoloc.trips.sequence import smooth

    frames = [r for r in results if not r.error]
    readings = [reading_of(r) for r in frames]
    one_camera = len({Camera.of(r).name for r in frames}) == 1
    times = None
    if frames and one_camera and all(x is not None for x in readings):
        times = [x.clock_s for x in readings]
    return smooth(frames, times)


def keep_tracks(db: Path, paths: Sequence[Path], warn: Callable[[str], None] = lambda line: None) -> list[Path]:
    """Copy tracks into the database (``geoloc index --track``), so that every later
    ``locate`` uses them without being told. Each is read first: a file that is not a track is
    refused (:class:`geoloc.trips.tracks.TrackError`), before anything is copied. A track
    already kept (same content) is not copied twice; another with the same name gets a new one."""
    import hashlib

    from geoloc.files import atomic_write, sha256_file

    for path in paths:
        cached_track(Path(path), warn)  # parsed once: the check before indexing filled the cache
    folder = Path(db) / TRACKS_FOLDER
    if os.path.lexists(folder) and not folder.is_dir():
        from geoloc.errors import GeolocError

        raise GeolocError(f"cannot keep tracks with {display_path(db)}: {display_path(folder)} is a file of yours, "
                          "not geoloc's tracks folder; rename it and run again")
    folder.mkdir(exist_ok=True)
    have = {sha256_file(p): p for p in kept_tracks(db)}
    kept = []
    for path in paths:
        data = Path(path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest in have:
            kept.append(have[digest])
            continue
        target = folder / Path(path).name
        n = 2
        while target.exists():
            target = folder / f"{Path(path).stem}-{n}{Path(path).suffix}"
            n += 1
        atomic_write(target, data)
        have[digest] = target
        kept.append(target)
    return kept


def time_only_results(db: Path, paths: Sequence[Path], unlocated: bool) -> list:
    """Answers with nothing but their capture time and camera, for a database that holds no
    GPS-tagged photo to match pixels against (a camera's photos and a GPS track: what
    ``exiftool -geotag`` does, with geoloc's clocks): time alone may then place them. A photo
    that cannot be read gets its error, as ``locate`` gives it."""
    from geoloc.database import Database
    from geoloc.errors import PhotoError
    from geoloc.locating.results import LocateResult
    from geoloc.photos import read_meta

    results = []
    for path in paths:
        result = LocateResult(Path(path))
        try:
            result.take_time(read_meta(path, sidecars=False))
        except PhotoError as exc:
            result.error = str(exc)
        results.append(result)
    if unlocated:
        named = {_key(p) for p in paths}
        with Database.open(db) as database:
            for record in database.photos():
                if not record.located and _key(record.path) not in named:
                    result = LocateResult(Path(record.path))
                    result.take_time(record)
                    results.append(result)
    return results
