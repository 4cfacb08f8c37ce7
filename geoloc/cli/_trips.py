"""What ``locate`` and ``eval`` share for trips: the options' words and turning them into a
:class:`geoloc.trips.evidence.TripConfig`, and telling people what the trip found."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

TRACK_HELP = ("A GPS track to place photos by their capture time: GPX, KML/KMZ, or Google Takeout location "
              "history (Records.json or the Timeline export). Repeat for several.")
CLOCK_HELP = ("How far a camera's clock runs ahead of UTC, as `geoloc clocks` names the camera: "
              "'NIKON COOLPIX P6000=-21:58:28'. Repeat per camera; overrides what geoloc solves.")
EVIDENCE_HELP = ("The evidence to use, comma-separated: visual (the pixels), time (the archive's photos "
                 "of known time), track (--track and the database's tracks). Default: all.")


SEQUENCE_HELP = ("The queries are frames of one trip (in name order, or by capture time when one camera "
                 "took them all): each is placed where its neighbours make a plausible path.")


def trip_config(tracks: Optional[List[Path]], clocks: Optional[List[str]], evidence: Optional[str],
                sequence: bool = False):
    """The options as a TripConfig; :class:`UsageError` for a malformed one."""
    from geoloc.errors import UsageError
    from geoloc.trips.evidence import KINDS, TripConfig
    from geoloc.trips.times import parse_offset

    parsed: dict[str, float] = {}
    for item in clocks or []:
        name, sep, value = item.rpartition("=")
        offset = parse_offset(value) if sep else None
        if not name.strip() or offset is None:
            raise UsageError(f"--clock {item}: write CAMERA=±HH:MM:SS, the camera as `geoloc clocks` names it")
        parsed[name.strip()] = offset
    kinds = tuple(KINDS)
    if evidence is not None:
        kinds = tuple(k.strip() for k in evidence.split(",") if k.strip())
        unknown = [k for k in kinds if k not in KINDS or k == "sequence"]
        if unknown or not kinds:
            raise UsageError(f"--evidence {evidence}: choose among visual, time, track")
    for track in tracks or []:
        path = Path(track).expanduser()
        if not path.is_file():
            from geoloc.errors import GeolocError

            why = "is a folder; name the track files in it" if path.is_dir() else "no such file"
            raise GeolocError(f"--track {track}: {why}")
    if sequence and "visual" not in kinds:
        raise UsageError("--sequence puts frames on a path through their visual candidates: it needs "
                         "visual in --evidence")
    if sequence and "sequence" not in kinds:
        kinds += ("sequence",)
    return TripConfig(tracks=[Path(t).expanduser() for t in tracks or []], clocks=parsed, evidence=kinds,
                      sequence=sequence)


def apply_trips(results: list, db: Path, config) -> None:
    """Fuse time with the visual answers (in place), and say what the trip could not use."""
    from geoloc import console
    from geoloc.trips.evidence import apply_to_database

    report = apply_to_database(results, db, config, warn=console.warn)
    if report is None:
        return
    if report.sequence is not None and config.sequence:
        seq = report.sequence
        if seq.sequences == 0:
            console.warn("--sequence: fewer than 3 frames to put in order; each photo was placed alone")
        elif seq.moved:
            from geoloc.formatting import count

            console.info(f"--sequence: {count(seq.moved, 'frame')} of {seq.frames} moved to a candidate "
                         "that keeps the path plausible")
    warn_unknown_clocks(config.clocks, report.clocks)
    for clock in report.clocks.values():
        if clock.source in ("visual", "visual-few"):
            from geoloc.trips.times import format_offset

            found = (f"{clock.camera.name}: {format_offset(clock.offset_s)} ahead of UTC (±{clock.spread_s:.0f} s), "
                     f"found from {clock.photos} of its photos placed by their pixels")
            if clock.source == "visual":
                console.info(f"clock of {found}")
            else:
                console.warn(f"clock of {found}, too few to place its photos by time: if it is right, "
                             f"run again with --clock '{clock.camera.name}={format_offset(clock.offset_s)}'")


def warn_unknown_clocks(given: dict, solved: dict) -> None:
    """A ``--clock`` for a camera none of the photos names: said, with the names there are."""
    from geoloc import console

    for name in given:
        if name not in solved:
            console.warn(f"--clock {name}: no photo here was taken with a camera of that name "
                         f"(cameras: {', '.join(sorted(solved)) or 'none'}); see `geoloc clocks`")
