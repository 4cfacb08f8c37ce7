"""Trips: camera clocks solved from real EXIF, photos placed by time between fixes, and time fused
with what the pixels say (tests/tripdata.py builds the derived Lund trip; docs/trips.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from statistics import median

import numpy as np
import pytest
from typer.testing import CliRunner

from geoloc.cli import app
from geoloc.geo import haversine_m
from geoloc.trips.clocks import Shot, shots_from_records, solve
from geoloc.trips.times import Camera, format_offset, parse_offset, reading
from geoloc.trips.timeline import Fixes, place

from clirun import DenseRunner
from tripdata import CAMERA, build_trip, lund_walk

runner = DenseRunner()  # trips are about time, not about how pixels are verified
#: The camera clock error of the Arezzo walk (DateTimeOriginal against the GPS time stamps).
AREZZO_OFFSET_S = -79108.0


@pytest.fixture(scope="module")
def arezzo(exif_dir) -> list[Path]:
    return sorted((exif_dir / "jpg" / "gps").glob("DSCN*.jpg"))


def _records(paths):
    from types import SimpleNamespace

    from geoloc.photos import read_meta

    out = []
    for p in paths:
        m = read_meta(p)
        out.append(SimpleNamespace(path=p, taken_at=m.taken_at, gps_time=m.gps_time, lat=m.lat, lon=m.lon,
                                   located=m.located, camera_make=m.camera_make, camera_model=m.camera_model,
                                   camera_serial=m.camera_serial, gps_accuracy_m=m.gps_accuracy_m))
    return out


def test_the_arezzo_cameras_day_wrong_clock_is_solved_from_its_gps_time_stamps(arezzo):
    clocks = solve(shots_from_records(_records(arezzo)))
    clock = clocks["NIKON COOLPIX P6000"]
    assert clock.source == "gps-time" and clock.photos == 9
    assert abs(clock.offset_s - AREZZO_OFFSET_S) <= 5
    assert format_offset(clock.offset_s) == "-21:58:28"
    one = solve(shots_from_records(_records(arezzo[:1])))["NIKON COOLPIX P6000"]
    assert abs(one.offset_s - AREZZO_OFFSET_S) <= 60


def test_without_gps_time_a_clock_is_only_guessed_from_the_time_zone_and_said_so(arezzo):
    records = _records(arezzo)
    for r in records:
        r.gps_time = None
    clock = solve(shots_from_records(records))["NIKON COOLPIX P6000"]
    assert clock.source == "timezone" and not clock.certain
    assert clock.offset_s == 7200  # Rome in October: the guess a camera on local time would give
    assert "guess" in clock.note


def test_a_clock_is_solved_from_visually_placed_photos_aligned_with_the_trip(lund_dir):
    """≥ 3 visually placed photos: within ±5 s; a few wrong matches do not move it."""
    walk = lund_walk(lund_dir)
    fixes = Fixes.build(archive=[(t.timestamp(), lat, lon, 5.0, Path(n)) for n, lat, lon, t in walk[::2]])
    offset = -3 * 3600 - 17 * 60 - 42.0
    camera = Camera(*CAMERA)
    rng = np.random.default_rng(0)
    shots = []
    for k, (name, lat, lon, t) in enumerate(walk[1::2]):
        dlat, dlon = rng.normal(0, 5e-5, 2)  # ~5 m of visual error
        if k in (2, 5):  # two look-alikes placed 300 m away
            dlat += 0.003
        shots.append(Shot(Path(name), camera, reading((t.replace(tzinfo=None) + _td(offset)).isoformat()),
                          lat=lat + dlat, lon=lon + dlon, placed_by="visual", radius_m=15.0))
    clock = solve(shots, fixes=fixes)[camera.name]
    assert clock.source == "visual" and clock.photos >= 3
    assert abs(clock.offset_s - offset) <= 5
    # One photo alone could be a look-alike finding the moment the trip passed somewhere like it:
    # its offset is told (within ±60 s) but never places a photo by time; --clock confirms it.
    for k in (0, 3, 4, 6, 9):
        single = solve(shots[k:k + 1], fixes=fixes)[camera.name]
        assert not single.certain and single.source == "visual-few" and single.photos == 1
        assert abs(single.offset_s - offset) <= 60 and "confirm with --clock" in single.note
        assert single.known_utc(shots[k].reading) is None
    two = solve(shots[3:5], fixes=fixes)[camera.name]
    assert not two.certain and abs(two.offset_s - offset) <= 60
    # A look-alike alone and a right photo disagree: nothing is told.
    split = solve([shots[2], shots[3]], fixes=fixes)[camera.name]
    assert split.source not in ("visual", "visual-few") and not split.certain


def test_two_bodies_of_one_model_without_serials_are_named_not_averaged():
    camera = Camera("Canon", "EOS 80D")
    shots = []
    for i in range(4):
        for offset in (0.0, 3600.0):
            shots.append(Shot(Path(f"{i}-{offset}.jpg"), camera, reading(f"2024-05-01T1{i}:00:00"),
                              gps_utc=reading(f"2024-05-01T1{i}:00:00").clock_s - offset))
    clock = solve(shots)[camera.name]
    assert clock.offset_s is None and "two bodies share the name" in clock.note


def test_time_places_a_photo_between_fixes_with_a_radius_that_grows_with_the_gap():
    fixes = Fixes.build(archive=[(0.0, 55.0, 13.0, 5.0, "a"), (60.0, 55.0005, 13.0, 5.0, "b"),
                                 (7200.0, 55.01, 13.0, 5.0, "c")])
    mid = place(fixes, 30.0)
    assert mid.evidence == "time" and mid.gap_s == 30
    assert abs(mid.lat - 55.00025) < 1e-7 and 5 < mid.radius_m < 70
    assert place(fixes, 2.0).radius_m < mid.radius_m
    assert place(fixes, 3600.0) is None  # an hour from any fix: unknown by time
    assert place(fixes, -100.0).gap_s == 100 and place(fixes, -400.0) is None


def test_track_segments_are_not_interpolated_across():
    class Track:  # the fields of geoloc.trips.tracks.Track that Fixes reads
        t = np.array([0.0, 10.0, 20.0, 30.0])
        lat = np.array([55.0, 55.0001, 56.0, 56.0001])
        lon = np.zeros(4) + 13
        segment = np.array([0, 0, 1, 1])
        accuracy_m = np.full(4, np.nan)
        sources = (Path("walk.gpx"),)

        def __len__(self):
            return 4

    fixes = Fixes.build(Track())
    assert place(fixes, 15.0).between == (Path("walk.gpx"),)  # next to one fix, not halfway to the next segment
    assert place(fixes, 15.0).lat in (55.0001, 56.0)
    assert place(fixes, 5.0).evidence == "track"


def test_offsets_are_written_and_read_as_clock_options_say():
    assert parse_offset("-21:58:28") == -79108 and parse_offset("+02:00") == 7200 and parse_offset("3") == 10800
    assert parse_offset("two hours") is None and format_offset(None) == "unknown"


def _td(seconds):
    from datetime import timedelta

    return timedelta(seconds=seconds)


# --- end to end, as a user runs it ------------------------------------------------------------


@pytest.fixture(scope="module")
def trip(tmp_path_factory, lund_dir, tiny_model):
    """The phone's odd Lund frames indexed (GPS, GPS times); the camera's even frames to place,
    its clock 3 h 17 min 42 s behind UTC."""
    from geoloc.indexing.run import IndexConfig, index_photos

    root = tmp_path_factory.mktemp("trip")
    truth = build_trip(lund_dir, root, camera_offset_s=-(3 * 3600 + 17 * 60 + 42))
    db = root / "db"
    index_photos([root / "phone"], db, IndexConfig(model=tiny_model, device="cpu"))
    return root, db, truth


def _errors(out, truth):
    errors = {}
    for o in out:
        name = Path(o["query"]).name
        e = o["estimate"]
        errors[name] = None if e is None else float(haversine_m(e["lat"], e["lon"], *truth[name]))
    return errors


def test_photos_of_a_camera_with_a_known_clock_are_placed_by_the_archives_time(trip):
    root, db, truth = trip
    result = runner.invoke(app, ["locate", str(root / "camera"), "--db", str(db), "--json", "--evidence", "time",
                                 "--clock", "FUJIFILM X-T30=-03:17:42"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    errors = _errors(out, truth)
    assert all(e is not None for e in errors.values())
    assert median(errors.values()) <= 10
    for o in out:
        est = o["estimate"]
        assert est["evidence"] == ["time"] and est["time_gap_s"] <= 60
        assert o["camera"] == "FUJIFILM X-T30" and o["taken_at_utc"].startswith("2024-05-01T08:")
        assert _errors([o], truth)[Path(o["query"]).name] <= est["radius_m"]


def test_a_camera_whose_clock_is_unknown_is_never_placed_by_time(trip):
    root, db, truth = trip
    result = runner.invoke(app, ["locate", str(root / "camera"), "--db", str(db), "--json", "--evidence", "time"])
    assert result.exit_code in (0, 1), result.output
    out = json.loads(result.stdout)
    assert all(o["estimate"] is None for o in out)
    assert all(any("clock of FUJIFILM X-T30 is unknown" in w for w in o["warnings"]) for o in out)


def test_a_visual_estimate_the_clock_contradicts_loses_confidence_and_says_why(trip):
    root, db, truth = trip
    wrong = "FUJIFILM X-T30=-03:27:42"  # ten minutes off: the walk is elsewhere then
    result = runner.invoke(app, ["locate", str(root / "camera" / "02.jpg"), "--db", str(db), "--json",
                                 "--clock", wrong])
    assert result.exit_code == 0, result.output
    (o,) = json.loads(result.stdout)
    assert o["estimate"]["confidence"] != "high"


def test_clocks_lists_each_camera_with_its_offset_and_source(trip):
    root, db, _ = trip
    result = runner.invoke(app, ["clocks", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    (phone,) = json.loads(result.stdout)
    assert {k for k in phone} >= {"camera", "make", "model", "serial", "offset_s", "source", "photos"}
    assert phone["camera"] == "Google Pixel 7" and phone["offset_s"] == 7200 and phone["photos"] == 15
    assert phone["source"] == "gps-time"
    table = runner.invoke(app, ["clocks", "--db", str(db)])
    assert table.exit_code == 0 and "Google Pixel 7" in table.stdout and "+02:00:00" in table.stdout


@pytest.mark.parametrize("args, message", [
    (["--clock", "NIKON"], "CAMERA=±HH:MM:SS"),
    (["--clock", "NIKON=soon"], "CAMERA=±HH:MM:SS"),
    (["--evidence", "smell"], "choose among visual, time, track"),
])
def test_malformed_trip_options_are_usage_errors(trip, args, message):
    root, db, _ = trip
    result = runner.invoke(app, ["locate", str(root / "camera" / "02.jpg"), "--db", str(db), *args])
    assert result.exit_code == 2 and message in result.stderr


def test_a_database_made_before_trips_reads_its_cameras_on_the_next_index(tmp_path, lund_dir, tiny_model):
    """Its rows get the camera and GPS time once, from EXIF alone (no photo is indexed again)."""
    import sqlite3

    root = tmp_path
    build_trip(lund_dir, root, camera_offset_s=0)
    db = root / "db"
    assert runner.invoke(app, ["index", str(root / "phone"), "--db", str(db), "--model", tiny_model]).exit_code == 0
    with sqlite3.connect(db / "photos.sqlite") as conn:  # as an older geoloc left it
        conn.execute("UPDATE photos SET camera_make = NULL, camera_model = NULL, gps_time = NULL, time_tag = NULL")
        conn.execute("DELETE FROM meta WHERE key LIKE 'trip_columns%'")
        # The mark of a first version that kept cameras but not which tag a time came from.
        conn.execute("INSERT INTO meta VALUES ('trip_columns', 1)")
    before = runner.invoke(app, ["clocks", "--db", str(db), "--json"])
    assert json.loads(before.stdout)[0]["camera"] == "unknown camera"
    result = runner.invoke(app, ["index", str(root / "phone"), "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["indexed"] == 0
    after = json.loads(runner.invoke(app, ["clocks", "--db", str(db), "--json"]).stdout)
    assert after[0]["camera"] == "Google Pixel 7" and after[0]["source"] == "gps-time"
    rows = json.loads(runner.invoke(app, ["photos", "--db", str(db), "--json"]).stdout)
    assert {r["time_tag"] for r in rows} == {"original"}


def test_a_time_from_exif_datetime_alone_places_nothing_and_says_why(trip, tmp_path):
    """IFD0 DateTime is rewritten by editors: a photo carrying only it is not placed by time,
    even with its camera's clock known, and the answer says why."""
    from PIL import Image

    root, db, truth = trip
    src = sorted((root / "camera").glob("*.jpg"))[3]
    edited = tmp_path / "edited"
    edited.mkdir()
    with Image.open(src) as image:
        exif = image.getexif()
        taken = exif.get_ifd(0x8769).pop(0x9003)
        exif.get_ifd(0x8769).pop(0x9004, None)
        exif[0x0132] = taken  # what an editor that drops the EXIF sub-IFD's times leaves
        image.save(edited / src.name, exif=exif.tobytes(), quality=90)
    args = ["locate", str(edited / src.name), str(src), "--db", str(db), "--json", "--evidence", "time",
            "--clock", "FUJIFILM X-T30=-03:17:42"]
    out = {Path(o["query"]).parent.name: o for o in json.loads(runner.invoke(app, args).stdout)}
    assert out["camera"]["estimate"] is not None and out["camera"]["taken_at_utc"]
    assert out["edited"]["estimate"] is None and out["edited"]["taken_at"] == out["camera"]["taken_at"]
    assert out["edited"]["taken_at_utc"] is None
    assert any("only EXIF DateTime" in w for w in out["edited"]["warnings"]), out["edited"]["warnings"]


def test_matches_the_pixels_did_not_verify_never_set_a_clock(trip):
    """The tiny test model verifies nothing: its look-alikes (``medium``, ``unverified``) must
    not find the camera's clock and then confirm themselves by it (only ``high`` placements
    vote, and at least three must agree; the alignment itself is tested above and measured
    with a real model in benchmarks/bench_trips.py)."""
    root, db, truth = trip
    result = runner.invoke(app, ["locate", str(root / "camera"), "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert all(o["taken_at_utc"] is None for o in out)
    assert all("time" not in o["estimate"]["evidence"] for o in out)
    assert all(any("clock of FUJIFILM X-T30 is unknown" in w for w in o["warnings"]) for o in out)


def test_photos_that_name_no_camera_share_no_clock():
    """A phone's GPS times must not set the clock of another device whose photos also lack
    Make and Model; a photo that wrote its zone still uses it."""
    nameless = Camera()
    shots = [Shot(Path(f"p{i}.jpg"), nameless, reading(f"2024-05-01T10:0{i}:00"),
                  gps_utc=reading(f"2024-05-01T10:0{i}:00").clock_s - 7200) for i in range(5)]
    shots.append(Shot(Path("cam.jpg"), nameless, reading("2024-05-01T06:42:00")))
    clock = solve(shots)["unknown camera"]
    assert clock.offset_s is None and not clock.certain and clock.photos == 6
    assert "name no camera" in clock.note
    assert clock.utc(reading("2024-05-01T10:00:00+02:00")) == reading("2024-05-01T08:00:00+00:00").clock_s


def test_a_phone_crossing_time_zones_keeps_one_clock():
    phone = Camera("Apple", "iPhone 13")
    shots = []
    for i, zone in enumerate(["+02:00"] * 5 + ["+03:00"] * 5):
        local = reading(f"2024-05-01T1{i}:00:00{zone}")
        shots.append(Shot(Path(f"{i}.jpg"), phone, local, gps_utc=local.utc_s + 0.5))
    clock = solve(shots)[phone.name]
    assert clock.source == "gps-time" and clock.certain and clock.photos == 10
    assert "zone changed" in clock.note


def test_without_the_pixels_nothing_is_left_when_no_photo_has_a_capture_time(lund_dir, tiny_db):
    result = runner.invoke(app, ["locate", str(lund_dir / "02.jpg"), str(lund_dir / "04.jpg"), "--db", str(tiny_db),
                                 "--json", "--evidence", "time"])
    out = json.loads(result.stdout)
    assert [o["estimate"] for o in out] == [None, None]


# --- sequences --------------------------------------------------------------------------------


def _frames(tops):
    """Frames along a street (10 m apart), each with candidates: the truth, and a look-alike
    300 m away; ``tops[i]`` says which one the pixels rank first."""
    from types import SimpleNamespace

    from geoloc.locating.results import Candidate, LocateResult

    frames = []
    for i, top in enumerate(tops):
        right = Candidate(1, Path(f"db/{i}.jpg"), 55.0 + i * 9e-5, 13.0, 0.50)
        wrong = Candidate(2, Path(f"db/far{i}.jpg"), 55.0 + i * 9e-5 + 0.0027, 13.0, 0.52 if top == "wrong" else 0.40)
        cands = [wrong, right] if top == "wrong" else [right, wrong]
        for rank, c in enumerate(cands, 1):
            c.rank = rank
        frames.append(LocateResult(Path(f"trip/frame{i + 1}.jpg"), candidates=cands))
    return frames


def test_a_frame_matched_to_a_look_alike_between_two_right_ones_is_moved_to_its_street():
    from geoloc.trips.sequence import smooth

    frames = _frames(["right", "right", "wrong", "right", "right"])
    report = smooth(frames)
    assert (report.sequences, report.moved) == (1, 1)
    moved = frames[2]
    assert moved.candidates[0].path == Path("db/2.jpg") and moved.candidates[0].rank == 1
    assert moved.estimate.evidence == ["visual", "sequence"] and moved.estimate.confidence == "medium"
    assert "frames before and after" in moved.estimate.warnings[0]


def test_a_consistent_sequence_is_left_as_the_pixels_placed_it():
    from geoloc.trips.sequence import smooth

    frames = _frames(["right"] * 6)
    assert smooth(frames).moved == 0
    assert [f.candidates[0].path for f in frames] == [Path(f"db/{i}.jpg") for i in range(6)]


def _street(options):
    """Frames along a street, a step of 12 m apart; ``options[i]`` lists frame i's candidates
    as steps along it (best first, by the pixels), and each has a look-alike 300 m away last."""
    from geoloc.locating.results import Candidate, LocateResult

    frames = []
    for i, steps in enumerate(options):
        steps = [*steps, 25]
        cands = [Candidate(k + 1, Path(f"db/{i}-{s}.jpg"), 55.0 + s * 12 / 111_195, 13.0, 0.50 - 0.01 * k)
                 for k, s in enumerate(steps)]
        for rank, c in enumerate(cands, 1):
            c.rank = rank
        frames.append(LocateResult(Path(f"walk/frame{i + 1:02d}.jpg"), candidates=cands))
    return frames


def _steps(frames):
    return [round((f.candidates[0].lat - 55.0) * 111_195 / 12) for f in frames]


def test_frames_without_time_keep_a_steady_pace_rather_than_jump_ahead_and_stand():
    """Frames 4 and 5 match best the place one step further down the street (a look-alike
    near enough to be reached in a step and a half); walking on at one pace through their
    second candidates is the plausible path, where jumping ahead and standing still was not
    told apart from it."""
    from geoloc.trips.sequence import smooth

    frames = _street([[0], [1], [2], [4, 3], [5, 4], [5], [6], [7]])
    report = smooth(frames)
    assert _steps(frames) == [0, 1, 2, 3, 4, 5, 6, 7] and report.moved == 2
    # A stop the pixels show is kept: standing still is a pace too.
    frames = _street([[0], [1], [2], [2], [2], [3], [4]])
    assert smooth(frames).moved == 0 and _steps(frames) == [0, 1, 2, 2, 2, 3, 4]


def test_frames_are_put_in_name_order_as_people_count_them():
    from geoloc.trips.sequence import natural_key

    names = [Path("t/img10.jpg"), Path("t/img2.jpg"), Path("t/img1.jpg")]
    assert sorted(names, key=natural_key) == [Path("t/img1.jpg"), Path("t/img2.jpg"), Path("t/img10.jpg")]


# --- tracks kept with the database, the trip written out, eval's modes ----------------------------


def test_a_track_kept_with_the_database_places_photos_of_a_known_clock(trip, lund_dir, tmp_path):
    from tripdata import write_gpx

    root, db, truth = trip
    gpx = write_gpx(lund_dir, tmp_path / "walk.gpx", every=3)
    kept = runner.invoke(app, ["index", str(root / "phone"), "--db", str(db), "--track", str(gpx), "--json"])
    assert kept.exit_code == 0, kept.output
    (copy,) = json.loads(kept.stdout)["tracks"]
    assert Path(copy).parent == db / "tracks" and Path(copy).read_bytes() == gpx.read_bytes()
    again = runner.invoke(app, ["index", str(root / "phone"), "--db", str(db), "--track", str(gpx), "--json"])
    assert json.loads(again.stdout)["tracks"] == [copy]  # the same track is kept once
    result = runner.invoke(app, ["locate", str(root / "camera"), "--db", str(db), "--json", "--evidence", "track",
                                 "--clock", "FUJIFILM X-T30=-03:17:42"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert all(o["estimate"]["evidence"] == ["track"] for o in out)
    assert median(_errors(out, truth).values()) <= 10


def test_a_file_that_is_not_a_track_is_refused_before_indexing(trip, lund_dir, tmp_path):
    root, db, _ = trip
    result = runner.invoke(app, ["index", str(root / "phone"), "--db", str(tmp_path / "new"),
                                 "--track", str(lund_dir / "01.jpg")])
    assert result.exit_code == 1 and "01.jpg" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "new").exists()


def test_the_trip_is_written_as_a_gpx_track_in_time_order_and_drawn_on_the_map(trip, tmp_path):
    import gpxpy

    root, db, truth = trip
    result = runner.invoke(app, ["locate", str(root / "camera"), "--db", str(db), "--gpx",
                                 "--clock", "FUJIFILM X-T30=-03:17:42", "--map", str(tmp_path / "trip.html")])
    assert result.exit_code == 0, result.output
    gpx = gpxpy.parse(result.stdout)
    assert len(gpx.waypoints) == len(truth)
    assert all(w.time is not None for w in gpx.waypoints)  # the camera's clock, corrected to UTC
    (track,) = gpx.tracks
    points = track.segments[0].points
    assert len(points) == len(truth)
    assert [p.time for p in points] == sorted(p.time for p in points)
    assert [p.name for p in points] == sorted(truth)  # the walk's order is the frames' order
    assert "trip (photos in time order)" in (tmp_path / "trip.html").read_text()


def test_eval_measures_each_kind_of_evidence_alone(trip, lund_dir, tmp_path):
    """The camera's frames with their true GPS as ground truth (never as clock evidence)."""
    from tripdata import CAMERA, lund_walk, write_photo

    root, db, truth = trip
    scored = tmp_path / "scored"
    scored.mkdir()
    from datetime import timedelta

    for i, (name, lat, lon, utc) in enumerate(lund_walk(lund_dir), start=1):
        if i % 2 == 0:
            write_photo(lund_dir / name, scored / name, make_model=CAMERA,
                        taken=(utc - timedelta(seconds=3 * 3600 + 17 * 60 + 42)).replace(tzinfo=None), gps=(lat, lon))
    figures = {}
    for evidence in ("time", "visual"):
        result = runner.invoke(app, ["eval", str(scored), "--db", str(db), "--json", "--evidence", evidence,
                                     "--clock", "FUJIFILM X-T30=-03:17:42"])
        assert result.exit_code == 0, result.output
        figures[evidence] = json.loads(result.stdout)
    assert figures["time"]["median_error_m"] <= 10
    wrong = runner.invoke(app, ["eval", "--dataset", str(tmp_path), "--evidence", "time"])
    assert wrong.exit_code == 2 and "QUERIES --db DB" in wrong.stderr


def test_a_camera_and_a_gps_track_alone_place_the_photos_by_time(trip, lund_dir, tmp_path, tiny_model):
    """No GPS-tagged photo to match pixels against: exiftool -geotag's case, with geoloc's clocks."""
    from tripdata import write_gpx

    root, _, truth = trip
    db = tmp_path / "cameradb"
    assert runner.invoke(app, ["index", str(root / "camera"), "--db", str(db), "--model", tiny_model]).exit_code == 0
    refused = runner.invoke(app, ["locate", "--unlocated", "--db", str(db), "--json"])
    assert refused.exit_code == 1 and "--track" in refused.stderr
    gpx = write_gpx(lund_dir, tmp_path / "walk.gpx")
    result = runner.invoke(app, ["locate", "--unlocated", "--db", str(db), "--json", "--track", str(gpx),
                                 "--clock", "FUJIFILM X-T30=-03:17:42"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert len(out) == len(truth) and all(o["estimate"]["evidence"] == ["track"] for o in out)
    assert median(_errors(out, truth).values()) <= 10


def test_a_kept_track_is_parsed_once_and_loaded_from_the_cache_after(lund_dir, tmp_path, monkeypatch):
    from tripdata import write_gpx

    from geoloc.trips import evidence, tracks

    gpx = write_gpx(lund_dir, tmp_path / "walk.gpx")
    first = evidence.cached_track(gpx, warn=print)
    calls = []
    monkeypatch.setattr(tracks, "read_track", lambda *a, **k: calls.append(a))
    again = evidence.cached_track(gpx, warn=print)
    assert calls == [] and len(again) == len(first) == 29
    assert np.array_equal(again.t, first.t) and np.array_equal(again.lat, first.lat)


def test_a_sequence_without_the_pixels_is_a_usage_error(lund_dir, tiny_db):
    result = runner.invoke(app, ["locate", str(lund_dir / "02.jpg"), "--db", str(tiny_db), "--sequence",
                                 "--evidence", "time"])
    assert result.exit_code == 2 and "needs visual in --evidence" in result.stderr
