"""Positions written into photographers' tools: only confident ones, safely, undoably.

The world of these tests: the odd Lund frames indexed with the offline model at 640 px, and a
small "library" of photos without GPS, as a photographer's unlocated photos are: even Lund
frames (the database covers them: their estimates are `high`), two photos of another town (the
Arezzo walk) and the ImageNet cat (the database covers neither: never `high`), plus one photo
with a GPS position of its own. Every write is checked with exiftool, an independent reader,
and the pixels by decoding both files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from geoloc.cli import app

pytestmark = pytest.mark.slow

EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool not installed (Debian: libimage-exiftool-perl)")
try:
    import pyexiv2  # noqa: F401

    HAVE_PYEXIV2 = True
except ImportError:
    HAVE_PYEXIV2 = False
BACKENDS = [
    pytest.param("exiftool", marks=needs_exiftool),
    pytest.param("pyexiv2", marks=pytest.mark.skipif(not HAVE_PYEXIV2, reason="pyexiv2 not installed")),
]

LUND_QUERIES = ("02", "08", "12", "16", "20", "26")
ELSEWHERE = ("DSCN0010.jpg", "DSCN0021.jpg", "cat.jpg")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "commands" / "locate.md"


def without_gps(src: Path, dest: Path, taken: tuple[str, str | None] | None = None) -> Path:
    """A copy of a photo with no GPS, as an unlocated photo is (re-encoded: a test input)."""
    image = Image.open(src)
    exif = image.getexif()
    exif.pop(0x8825, None)
    if taken:
        sub = exif.get_ifd(0x8769)
        sub[0x9003] = taken[0]
        if taken[1]:
            sub[0x9011] = taken[1]
    image.convert("RGB").save(dest, quality=95, exif=exif.tobytes())
    return dest


def exiftool_servers(parent: int | None = None) -> set[int]:
    """The exiftool -stay_open processes running now (Linux /proc; empty elsewhere), only the
    children of ``parent`` when given: another test process may run its own at the same time."""
    found = set()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if parent is not None:
                status = (entry / "status").read_text()
                if f"\nPPid:\t{parent}\n" not in status:
                    continue
        except OSError:
            continue
        if b"-stay_open" in argv and any(b"exiftool" in a for a in argv):
            found.add(int(entry.name))
    return found


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def pixels(path: Path) -> bytes:
    with Image.open(path) as image:
        return image.tobytes()


def exif_gps(path: Path) -> dict:
    """What exiftool reads from the photo's own EXIF GPS block (signed degrees)."""
    out = subprocess.run([EXIFTOOL, "-j", "-n", "-EXIF:GPS:all", str(path)], capture_output=True, text=True, check=True)
    tags = json.loads(out.stdout)[0]
    if "GPSLatitude" in tags:
        tags["lat"] = tags["GPSLatitude"] * (-1 if tags.get("GPSLatitudeRef") == "S" else 1)
        tags["lon"] = tags["GPSLongitude"] * (-1 if tags.get("GPSLongitudeRef") == "W" else 1)
    return tags


@pytest.fixture(scope="module")
def world(tmp_path_factory, lund_dir, exif_dir, data_dir):
    """The database, and the library's pristine copy. The library is indexed too (its photos
    without GPS stored unlocated, as `geoloc index ~/Pictures` stores them), so that locating
    it reuses stored descriptors, as `--unlocated` does: the tests pay for no network."""
    from geoloc.indexing.run import IndexConfig, index_photos

    root = tmp_path_factory.mktemp("trust")
    pristine = root / "pristine"
    lib = pristine / "library"
    lib.mkdir(parents=True)
    for n in LUND_QUERIES:
        # One with a UTC offset (GPX can carry its time), one with a local time only.
        taken = {"02": ("2019:05:03 14:22:01", "+02:00"), "08": ("2019:05:03 14:25:00", None)}.get(n)
        without_gps(lund_dir / f"{n}.jpg", lib / f"{n}.jpg", taken)
    for name in ELSEWHERE[:2]:
        without_gps(exif_dir / "jpg" / "gps" / name, lib / name)
    without_gps(data_dir / "imagenet" / "cat.bmp", lib / "cat.jpg")
    shutil.copy2(lund_dir / "06.jpg", lib / "own.jpg")  # GPS of its own
    (lib / "own.jpg").chmod(0o644)  # a user's photo, not the shared data's read-only copy
    work = root / "work"
    shutil.copytree(pristine, work, copy_function=shutil.copy2)
    db = root / "db"
    report = index_photos([*(lund_dir / f"{i:02d}.jpg" for i in range(1, 30, 2)), work / "library"],
                          db, IndexConfig(model="lite0-vlad", max_side=640, device="cpu"))
    assert report.located == 16 and report.errors == 0
    result = locate(work / "library", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    return db, pristine, work, by_name(result.stdout)


@pytest.fixture
def library(world):
    """The library as indexed, restored before each test that writes into it (same bytes and
    modification times: the database still knows every photo)."""
    db, pristine, work, estimates = world
    shutil.rmtree(work)
    shutil.copytree(pristine, work, copy_function=shutil.copy2)
    return db, work / "library"


def locate(*args):
    # These tests are about what is written and undone, not about how candidates are verified:
    # dense alone, as fast as it gets (the default verifier has its own tests: test_rerank, test_learned).
    return CliRunner().invoke(app, ["locate", "--verifier", "dense", *map(str, args)])


def by_name(stdout: str) -> dict[str, dict]:
    return {Path(o["query"]).name: o for o in json.loads(stdout)}


# --------------------------------------------------------------------------------------------
# --write-exif and undo-exif
# --------------------------------------------------------------------------------------------


@needs_exiftool
@pytest.mark.parametrize("backend", BACKENDS)
def test_write_exif_writes_confident_estimates_exactly_and_undo_takes_them_out(library, backend, monkeypatch):
    db, lib = library
    monkeypatch.setenv("GEOLOC_EXIF_WRITER", backend)
    before = {p.name: (sha(p), pixels(p)) for p in lib.iterdir()}
    result = locate(lib, "--db", db, "--json", "--write-exif")
    assert result.exit_code == 0, result.output
    out = by_name(result.stdout)

    written = [f"{n}.jpg" for n in LUND_QUERIES]
    for name in written:
        e = out[name]["estimate"]
        assert e["confidence"] == "high", out[name]
        tags = exif_gps(lib / name)
        # exiftool reads back the JSON estimate, with its hemisphere and radius, signed as geoloc's.
        assert tags["lat"] == pytest.approx(e["lat"], abs=1e-6) and tags["lon"] == pytest.approx(e["lon"], abs=1e-6)
        assert tags["GPSLatitudeRef"] == "N" and tags["GPSLongitudeRef"] == "E"
        assert tags["GPSHPositioningError"] == pytest.approx(e["radius_m"], abs=0.05)
        assert tags["GPSProcessingMethod"].startswith("geoloc ")
        assert pixels(lib / name) == before[name][1]  # not re-encoded
        assert sha(lib / name) != before[name][0]
    for name in (*ELSEWHERE, "own.jpg"):
        assert sha(lib / name) == before[name][0], f"{name} was written to"
    for name in ELSEWHERE:
        assert out[name]["estimate"]["confidence"] != "high"
    assert re.search(rf"EXIF GPS written into {len(written)} photos with {backend}", result.stderr), result.stderr
    assert "1 with a position of their own left alone" in result.stderr
    assert re.search(r"3 estimates below confidence high left out of the photos", result.stderr), result.stderr
    assert "undo with `geoloc undo-exif`" in result.stderr

    # geoloc never takes its own estimate for a position when it indexes or locates again.
    from geoloc.photos import read_meta

    meta = read_meta(lib / written[0])
    assert not meta.located and meta.exif_gps == "geoloc" and "written by geoloc" in meta.no_position_reason

    undo = CliRunner().invoke(app, ["undo-exif"])
    assert undo.exit_code == 0, undo.output
    assert f"GPS put back in {len(written)} photos" in undo.stderr
    for name in written:
        assert "GPSLatitude" not in exif_gps(lib / name)
        assert pixels(lib / name) == before[name][1]
    again = CliRunner().invoke(app, ["undo-exif"])
    assert again.exit_code == 1 and "nothing to undo" in again.stderr


@needs_exiftool
def test_overwrite_replaces_a_cameras_gps_and_undo_puts_it_back(library):
    db, lib = library
    own = lib / "own.jpg"
    camera, before = exif_gps(own), sha(own)
    result = locate(own, lib / "02.jpg", "--db", db, "--write-exif")
    assert result.exit_code == 0 and sha(own) == before
    assert exif_gps(own)["lat"] == camera["lat"]  # untouched without --overwrite
    result = locate(own, "--db", db, "--write-exif", "--overwrite", "--json")
    assert result.exit_code == 0, result.output
    assert exif_gps(own)["GPSProcessingMethod"].startswith("geoloc")
    undo = CliRunner().invoke(app, ["undo-exif"])
    assert undo.exit_code == 0, undo.output
    back = exif_gps(own)
    for tag in ("lat", "lon", "GPSAltitude", "GPSLatitudeRef"):
        assert back[tag] == pytest.approx(camera[tag]) if isinstance(camera[tag], float) else back[tag] == camera[tag]
    assert "GPSProcessingMethod" not in back


@needs_exiftool
def test_undo_leaves_a_photo_edited_since_alone_and_says_so(library):
    """...and closes that run, so that the next undo goes on with the run before it instead of
    stopping at the edited photo for ever."""
    db, lib = library
    assert locate(lib / "08.jpg", "--db", db, "--write-exif").exit_code == 0  # an earlier run
    result = locate(lib / "02.jpg", lib / "12.jpg", "--db", db, "--write-exif")
    assert result.exit_code == 0, result.output
    edited = lib / "12.jpg"
    subprocess.run([EXIFTOOL, "-q", "-overwrite_original", "-Artist=Someone", str(edited)], check=True)
    undo = CliRunner().invoke(app, ["undo-exif"])
    assert undo.exit_code == 1
    assert "12.jpg: changed since geoloc wrote its GPS; left as it is" in undo.stderr
    assert "now goes on with the run before it" in undo.stderr
    assert "GPSLatitude" not in exif_gps(lib / "02.jpg")  # the other one is undone
    assert exif_gps(edited)["GPSProcessingMethod"].startswith("geoloc")  # the edited one is not
    listed = CliRunner().invoke(app, ["undo-exif", "--list"])
    assert "undone (1 photo left unchanged)" in listed.stdout  # the listing is the result: stdout
    assert exif_gps(lib / "08.jpg")["GPSProcessingMethod"].startswith("geoloc")
    undo = CliRunner().invoke(app, ["undo-exif"])  # the earlier run now
    assert undo.exit_code == 0, undo.output
    assert "GPSLatitude" not in exif_gps(lib / "08.jpg")


@needs_exiftool
def test_kill_9_during_write_exif_leaves_every_photo_whole_and_the_journal_true(world, library):
    """A run killed mid-write: each photo is its original or the finished new file, the
    journal says which, the next run cleans up, and undo-exif puts everything back."""
    db, photos = library
    originals = {p.name: (sha(p), pixels(p)) for p in photos.iterdir()}
    undo_dir = Path(os.environ["GEOLOC_HOME"]) / "undo"
    env = dict(os.environ, GEOLOC_EXIF_WRITER="exiftool")
    proc = subprocess.Popen([sys.executable, "-m", "geoloc", "locate", "--verifier", "dense", str(photos), "--db", str(db),
                             "--write-exif"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        journal = next(iter(undo_dir.glob("*.jsonl")), None) if undo_dir.is_dir() else None
        if journal and journal.read_text().count('"op": "write"') >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()
    servers = exiftool_servers(parent=proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # geoloc's exiftool outlives it by the command in flight (it stops at the end of its input):
    # that command may still finish a temporary file, which the next run must then clean up.
    deadline = time.monotonic() + 30
    while servers & exiftool_servers() and time.monotonic() < deadline:
        time.sleep(0.05)

    from geoloc.outputs.undo_journal import journals, read_journal

    (path,) = journals()
    info = read_journal(path)
    entries = {e.photo.name: e for e in info.entries}
    assert 3 <= len(entries) < len(LUND_QUERIES)  # killed mid-run
    for p in photos.iterdir():
        if p.name not in originals:
            assert p.name.startswith(".") and ".geoloc-tmp-" in p.name  # the photo in flight's temp
            continue
        now = sha(p)
        assert pixels(p) == originals[p.name][1]  # every photo decodes, to its own pixels
        if p.name in entries:
            assert now in (entries[p.name].before, entries[p.name].after)
            assert entries[p.name].before == originals[p.name][0]
        else:
            assert now == originals[p.name][0]

    undo = CliRunner().invoke(app, ["undo-exif"])
    assert undo.exit_code == 0, undo.output
    assert sorted(p.name for p in photos.iterdir()) == sorted(originals)  # no temporary file left
    for p in photos.iterdir():
        assert pixels(p) == originals[p.name][1]
        if p.name != "own.jpg":
            assert "GPSLatitude" not in exif_gps(p)


def test_write_exif_refuses_raw_files_and_heic_without_a_writer_for_it(tmp_path, exif_dir, monkeypatch):
    from geoloc.photos.gpswrite import Pyexiv2, unwritable_reason

    class Fake:
        name, suffixes = "pyexiv2", Pyexiv2.suffixes

    assert "XMP sidecar (--xmp)" in unwritable_reason(Path("a.heic"), Fake())
    assert "RAW file is never written" in unwritable_reason(Path("a.CR2"), Fake())
    assert unwritable_reason(Path("a.JPG"), Fake()) is None


@needs_exiftool
def test_exiftool_writes_heic_with_the_pixels_unchanged(tmp_path, exif_dir):
    from geoloc.photos.gpswrite import Exiftool, GpsFix, temp_path, write_to_temp
    from geoloc.photos import read_meta

    photo = tmp_path / "sample.heif"
    shutil.copy(exif_dir / "heic" / "samplefilehub.heif", photo)
    temp = temp_path(photo)
    with Exiftool(EXIFTOOL) as backend:
        write_to_temp(photo, temp, backend, GpsFix(-33.4489, -70.6693, 42.0))
    assert exif_gps(temp)["lat"] == pytest.approx(-33.4489, abs=1e-6)
    assert read_meta(temp, sidecars=False).exif_gps == "geoloc"


def test_a_missing_writer_is_one_line_before_any_work(tmp_path, monkeypatch, world):
    db, _, work, _ = world
    lib = work / "library"
    monkeypatch.setenv("PATH", str(tmp_path))  # no exiftool
    monkeypatch.setitem(sys.modules, "pyexiv2", None)  # and no pyexiv2
    result = locate(lib / "02.jpg", "--db", db, "--write-exif")
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error: --write-exif needs a metadata writer: install exiftool")
    assert "--xmp" in result.stderr and len(result.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------
# Gating: --min-confidence
# --------------------------------------------------------------------------------------------


def test_min_confidence_gates_sidecars_and_the_csv(library):
    db, lib = library
    result = locate(lib, "--db", db, "--xmp", "--csv")
    assert result.exit_code == 0, result.output
    sidecars = sorted(p.name for p in lib.glob("*.xmp"))
    assert sidecars == sorted(f"{n}.xmp" for n in LUND_QUERIES)  # none for the other town, the cat
    rows = result.stdout.strip().splitlines()[1:]
    assert sorted(Path(r.split(",")[0]).name for r in rows) == sorted([f"{n}.jpg" for n in LUND_QUERIES] + ["own.jpg"])
    assert "3 estimates below confidence high left out of the sidecars" in result.stderr
    assert "3 estimates below confidence high left out of the CSV" in result.stderr

    lower = locate(lib, "--db", db, "--xmp", "--min-confidence", "low")
    assert lower.exit_code == 0
    assert {"DSCN0010.xmp", "DSCN0021.xmp", "cat.xmp"} <= {p.name for p in lib.glob("*.xmp")}
    # Maps show everything unless asked: GeoJSON and GPX default to low.
    geo = json.loads(locate(lib, "--db", db, "--geojson").stdout)
    assert len(geo["features"]) == 10


def test_min_confidence_needs_a_writer_and_a_known_level(world):
    db, _, work, _ = world
    lib = work / "library"
    for args, words in ((["--min-confidence", "high"], "applies to what is written"),
                        (["--xmp", "--min-confidence", "sure"], "choose one of low, medium, high"),
                        (["--overwrite"], "only applies to --write-exif")):
        result = locate(lib / "02.jpg", "--db", db, *args)
        assert result.exit_code == 2 and words in result.stderr, result.stderr


# --------------------------------------------------------------------------------------------
# GPX
# --------------------------------------------------------------------------------------------


def test_gpx_is_gpx_1_1_with_names_times_and_radii(world):
    gpxpy = pytest.importorskip("gpxpy")
    import xml.etree.ElementTree as ET

    db, _, work, as_json = world
    result = locate(work / "library", "--db", db, "--gpx")
    assert result.exit_code == 0, result.output
    root = ET.fromstring(result.stdout)
    assert root.tag == "{http://www.topografix.com/GPX/1/1}gpx" and root.get("version") == "1.1"
    gpx = gpxpy.parse(result.stdout)
    assert gpx.version == "1.1"
    assert len(gpx.waypoints) == len(as_json)
    ns = {"g": "http://www.topografix.com/GPX/1/1"}
    radius = {w.find("g:name", ns).text: float(next(x for x in w.find("g:extensions", ns) if x.tag.endswith("radius_m")).text)
              for w in root.findall("g:wpt", ns)}
    for w in gpx.waypoints:
        e = as_json[w.name]["estimate"]
        assert (w.latitude, w.longitude) == (pytest.approx(e["lat"], abs=1e-7), pytest.approx(e["lon"], abs=1e-7))
        assert radius[w.name] == pytest.approx(e["radius_m"], abs=0.05)
        assert w.comment.startswith("radius ") and w.comment.endswith(f"confidence {e['confidence']}")
    times = {w.name: w.time for w in gpx.waypoints}
    # GPX time is UTC: written when the photo's EXIF gave its offset, else only as local time.
    assert times["02.jpg"].strftime("%Y-%m-%dT%H:%M:%S") == "2019-05-03T12:22:01" and times["02.jpg"].utcoffset().total_seconds() == 0
    assert times["08.jpg"] is None
    assert "2019-05-03 14:25:00 by the camera's clock" in next(w.description for w in gpx.waypoints if w.name == "08.jpg")


# --------------------------------------------------------------------------------------------
# The recipes of docs/commands/locate.md, run as written
# --------------------------------------------------------------------------------------------


def recipe(name: str) -> str:
    """The shell command under ``<!-- recipe: NAME -->`` in the locate docs."""
    text = DOCS.read_text()
    match = re.search(rf"<!-- recipe: {name} -->\s*```(?:sh|bash|console)?\n(.*?)```", text, re.S)
    assert match, f"docs/commands/locate.md has no {name} recipe"
    return match.group(1).strip()


def run_recipe(name: str, cwd: Path) -> None:
    """The documented commands as written, but for ``--verifier dense`` after ``geoloc locate``:
    these tests are about the exiftool half, and the default verifier costs each run seconds."""
    command = recipe(name)
    assert command.startswith("geoloc locate ")
    command = command.replace("geoloc locate ", "geoloc locate --verifier dense ", 1)
    done = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"))
    assert done.returncode == 0, done.stdout + done.stderr


@needs_exiftool
@pytest.mark.parametrize("name", ["csv", "xmp", "xmp-full", "gpx"])
def test_each_documented_exiftool_recipe_copies_the_estimate_into_the_photos(world, library, name):
    db, lib = library
    estimates = world[3]
    default = Path(os.environ["GEOLOC_HOME"]) / "databases" / "default"
    default.parent.mkdir(parents=True)
    default.symlink_to(db)  # the recipes use the default database
    own_before = exif_gps(lib / "own.jpg")
    pixels_before = {n: pixels(lib / f"{n}.jpg") for n in LUND_QUERIES}
    run_recipe(name, lib)
    checked = LUND_QUERIES if name != "gpx" else ("02",)  # GPX: only a photo with a UTC time
    for n in checked:
        e = estimates[f"{n}.jpg"]["estimate"]
        tags = exif_gps(lib / f"{n}.jpg")
        assert tags["lat"] == pytest.approx(e["lat"], abs=1e-6) and tags["lon"] == pytest.approx(e["lon"], abs=1e-6), name
        assert pixels(lib / f"{n}.jpg") == pixels_before[n]
        if name != "gpx":
            assert tags["GPSHPositioningError"] == pytest.approx(e["radius_m"], abs=0.05)
            assert tags["GPSProcessingMethod"].startswith("geoloc ")
    if name == "gpx":
        assert "GPSLatitude" not in exif_gps(lib / "08.jpg")  # no UTC time: not guessed by time
    for other in ELSEWHERE:
        assert "GPSLatitude" not in exif_gps(lib / other)  # not confident: not in the files
    assert exif_gps(lib / "own.jpg")["lat"] == own_before["lat"]  # a camera's position stays


def test_recipes_name_the_ref_tags():
    """exiftool writes only the magnitude of a signed latitude: without the Ref tags, a photo
    south of the equator or west of Greenwich lands in the wrong hemisphere."""
    for name in ("xmp", "xmp-full"):
        text = recipe(name)
        assert "GPSLatitudeRef" in text and "GPSLongitudeRef" in text


def test_undo_journal_survives_a_line_cut_short(tmp_path):
    from geoloc.outputs.undo_journal import Journal, read_journal

    with Journal.create("exiftool", "12.57") as journal:
        journal.append({"op": "temp", "photo": "/p/a.jpg", "temp": "/p/.a.geoloc-tmp-1.jpg"})
        journal.append({"op": "write", "photo": "/p/a.jpg", "before": "b" * 64, "after": "a" * 64,
                        "gps_before": {}, "backend": "exiftool"})
        path = journal.path
    with open(path, "a") as fh:
        fh.write('{"op": "temp", "photo": "/p/b.j')  # killed mid-line
    info = read_journal(path)
    assert [e.photo.name for e in info.entries] == ["a.jpg"] and info.damaged_lines == 1
    assert np.array_equal(sorted(t.name for t in info.temps), [".a.geoloc-tmp-1.jpg"])


@needs_exiftool
def test_a_photo_written_by_two_runs_is_undone_run_by_run(library):
    """The second run rewrites the first's estimate (allowed without --overwrite: it is
    geoloc's own); undoing it gives the first estimate back, undoing the first gives no GPS."""
    db, lib = library
    photo = lib / "02.jpg"
    assert locate(photo, "--db", db, "--write-exif").exit_code == 0
    first = exif_gps(photo)
    assert first["GPSProcessingMethod"].startswith("geoloc")
    second_run = locate(photo, "--db", db, "--write-exif", "--top-k", "3")
    assert second_run.exit_code == 0, second_run.output
    assert "EXIF GPS written into 1 photo" in second_run.stderr
    undo = CliRunner().invoke(app, ["undo-exif"])
    assert undo.exit_code == 0, undo.output
    assert exif_gps(photo)["lat"] == pytest.approx(first["lat"], abs=1e-7)  # the first run's estimate
    undo = CliRunner().invoke(app, ["undo-exif"])
    assert undo.exit_code == 0, undo.output
    assert "GPSLatitude" not in exif_gps(photo)
    assert CliRunner().invoke(app, ["undo-exif"]).exit_code == 1  # nothing left to undo


def test_write_exif_leaves_a_read_only_photo_alone(library):
    """Made read-only on purpose: left alone, root (a container's usual user) included."""
    db, lib = library
    photo = lib / "02.jpg"
    before = sha(photo)
    photo.chmod(0o444)
    result = locate(photo, "--db", db, "--write-exif")
    assert "read-only" in result.stderr and sha(photo) == before


@needs_exiftool
def test_a_photo_gone_since_it_was_indexed_gets_no_exif_and_no_orphan_sidecar(library, tmp_path):
    """--unlocated answers from the stored descriptor; a photo moved away since then is named as
    gone, not as read-only, and no sidecar is left next to nothing."""
    db, lib = library
    shutil.move(lib / "02.jpg", tmp_path / "02.jpg")
    for flag in ("--write-exif", "--xmp"):
        result = locate("--unlocated", "--db", db, flag, "--min-confidence", "low")
        gone = [line for line in result.stderr.splitlines() if "02.jpg" in line]
        assert gone and all("no longer there" in line for line in gone), result.stderr
    assert not (lib / "02.xmp").exists() and (lib / "08.xmp").exists()


def test_a_journal_line_missing_its_fields_is_damage_not_a_crash(tmp_path):
    from geoloc.outputs.undo_journal import Journal, read_journal

    with Journal.create("exiftool", "12.57") as journal:
        journal.append({"op": "write", "photo": "/p/a.jpg", "after": "a" * 64})  # no "before"
        journal.append({"op": "temp", "photo": "/p/a.jpg"})  # no "temp"
        path = journal.path
    info = read_journal(path)
    assert info.entries == [] and info.damaged_lines == 2
    listed = CliRunner().invoke(app, ["undo-exif", "--list"])
    assert "internal error" not in listed.stderr and "Traceback" not in listed.output


def test_a_run_in_progress_keeps_its_temporary_file(tmp_path):
    """Another run's clean-up of killed runs' leftovers skips a journal whose run is live."""
    from geoloc.outputs.undo_journal import Journal, remove_stale_temps

    temp = tmp_path / ".a.geoloc-tmp-1.jpg"
    temp.write_bytes(b"half written")
    with Journal.create("exiftool", "12.57") as journal:
        journal.append({"op": "temp", "photo": os.fspath(tmp_path / "a.jpg"), "temp": os.fspath(temp)})
        assert remove_stale_temps() == [] and temp.exists()  # live: left alone
    assert remove_stale_temps() == [temp] and not temp.exists()  # its run is over: a leftover


def test_undo_of_a_journal_that_is_not_there_is_one_line_exit_1(tmp_path):
    result = CliRunner().invoke(app, ["undo-exif", str(tmp_path / "nonexistent.jsonl")])
    assert result.exit_code == 1 and "no such undo journal" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------
# Issue 19: names, sizes, owners and links a photo library really has
# --------------------------------------------------------------------------------------------


def journal_lines(path: Path) -> list[dict]:
    text = path.read_bytes().decode("utf-8")  # every line is valid UTF-8, whatever the names
    return [json.loads(line) for line in text.splitlines()]


@needs_exiftool
@pytest.mark.parametrize("backend", BACKENDS)
def test_write_exif_keeps_a_name_that_is_not_utf8_exactly_and_goes_on(library, backend, monkeypatch):
    """POSIX names are bytes: one that is not UTF-8 is journalled exactly (and said in bytes,
    for readers that cannot keep Python's surrogate escapes), and the photos after it are written."""
    if os.name != "posix":
        pytest.skip("POSIX file names are bytes")
    db, lib = library
    monkeypatch.setenv("GEOLOC_EXIF_WRITER", backend)
    odd = lib / os.fsdecode(b"caf\xe9-02.jpg")
    (lib / "02.jpg").rename(odd)
    result = locate(odd, lib / "08.jpg", "--db", db, "--write-exif")
    assert result.exit_code == 0 and "internal error" not in result.output, result.output
    assert "EXIF GPS written into 2 photos" in result.stderr, result.stderr
    assert exif_gps(odd)["GPSProcessingMethod"].startswith("geoloc")
    assert exif_gps(lib / "08.jpg")["GPSProcessingMethod"].startswith("geoloc")
    from geoloc.outputs.undo_journal import journals

    (path,) = journals()
    writes = {line["photo"]: line for line in journal_lines(path) if line.get("op") == "write"}
    assert set(writes) == {os.fspath(odd), os.fspath(lib / "08.jpg")}
    assert bytes.fromhex(writes[os.fspath(odd)]["photo_bytes"]) == os.fsencode(odd)
    assert "photo_bytes" not in writes[os.fspath(lib / "08.jpg")]  # only where the text cannot say it
    undo = CliRunner().invoke(app, ["undo-exif", "--json"])
    assert undo.exit_code == 0, undo.output
    assert "GPSLatitude" not in exif_gps(odd) and "GPSLatitude" not in exif_gps(lib / "08.jpg")
    assert "GPS put back in 2 photos" in undo.stderr


def uniform_jpeg(path: Path, width: int, height: int) -> Path:
    """A real baseline greyscale JPEG of ``width``×``height`` mid-grey pixels, written without
    ever holding its pixels: every 8×8 block is the same two one-bit Huffman codes (DC difference
    0, end of block), so a 195-megapixel photo is a 760 kB file made in a moment."""
    import struct

    def segment(marker: int, body: bytes) -> bytes:
        return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body

    dqt = segment(0xDB, bytes([0]) + bytes([1] * 64))
    sof = segment(0xC0, struct.pack(">BHHB", 8, height, width, 1) + bytes([1, 0x11, 0]))
    # One code each, of one bit ("0"): DC difference category 0, and AC end of block.
    one_code = bytes([1] + [0] * 15)
    dht = segment(0xC4, bytes([0x00]) + one_code + bytes([0x00]) + bytes([0x10]) + one_code + bytes([0x00]))
    sos = segment(0xDA, bytes([1, 1, 0x00, 0, 63, 0]))
    blocks = -(-width // 8) * -(-height // 8)
    whole, rest = divmod(blocks, 4)  # 2 bits a block: 4 blocks, one zero byte
    tail = bytes([(0xFF >> (2 * rest)) & 0xFF]) if rest else b""  # padded with ones, as the standard says
    with open(path, "wb") as fh:
        fh.write(b"\xff\xd8" + dqt + sof + dht + sos)
        chunk = bytes(1 << 20)
        for _ in range(whole >> 20):
            fh.write(chunk)
        fh.write(bytes(whole & ((1 << 20) - 1)) + tail + b"\xff\xd9")
    return path


def test_the_huge_test_jpeg_is_a_real_jpeg(tmp_path):
    small = uniform_jpeg(tmp_path / "small.jpg", 100, 75)
    with Image.open(small) as image:
        assert image.size == (100, 75) and image.mode == "L"
        assert set(image.getdata()) == {128}


@needs_exiftool
def test_write_exif_into_a_195_megapixel_jpeg_in_bounded_memory(tmp_path, lund_dir):
    """Under geoloc's own pixel limit, so written: the pixels compared exactly without decoding
    two 585 MB images (nor Pillow's bomb check stopping the run), and the next photo is written."""
    big = uniform_jpeg(tmp_path / "big.jpg", 15000, 13000)
    small = without_gps(lund_dir / "02.jpg", tmp_path / "small.jpg")
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from geoloc.locating.estimate import Estimate\n"
        "from geoloc.locating.results import LocateResult\n"
        "from geoloc.outputs.writeback import write_estimates\n"
        "rs = [LocateResult(Path(p), Estimate(55.7, 13.19, 12.0)) for p in sys.argv[1:]]\n"
        "report = write_estimates(rs)\n"
        "print(len(report.written), [r for _, r in report.failed])\n"
        # This process's own peak (VmHWM): ru_maxrss would count pytest's, inherited at the fork.
        "status = Path('/proc/self/status')\n"
        "print(next((int(l.split()[1]) // 1024 for l in status.read_text().splitlines() if l.startswith('VmHWM')), 0)\n"
        "      if status.exists() else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(big), str(small)], capture_output=True, text=True,
                          env=dict(os.environ, GEOLOC_EXIF_WRITER="exiftool"), timeout=300)
    assert done.returncode == 0, done.stderr
    written, peak_mb = done.stdout.splitlines()
    assert written == "2 []"
    assert int(peak_mb) < 400, f"{peak_mb} MB to write a 195 MP photo"
    assert done.stderr == ""  # no DecompressionBombWarning on the terminal
    assert exif_gps(big)["GPSProcessingMethod"].startswith("geoloc")


def test_same_pixels_is_exact_whatever_the_path(tmp_path, lund_dir):
    from geoloc.photos.gpswrite import same_pixels

    a = tmp_path / "a.jpg"
    shutil.copy(lund_dir / "02.jpg", a)
    with Image.open(a) as image:
        image.save(tmp_path / "b.png")
        image.save(tmp_path / "c.jpg", quality=80)  # re-encoded: other pixels
        pixels_a = image.tobytes()
    changed = bytearray(pixels_a)
    changed[-1] ^= 1  # one bit of the last pixel
    Image.frombytes("RGB", (1024, 768), bytes(changed)).save(tmp_path / "d.png")
    assert same_pixels(a, a)
    assert not same_pixels(a, tmp_path / "c.jpg")
    assert same_pixels(tmp_path / "b.png", tmp_path / "b.png")
    assert not same_pixels(tmp_path / "b.png", tmp_path / "d.png")
    with Image.open(tmp_path / "b.png") as ib:
        assert ib.tobytes() == pixels_a
    assert same_pixels(a, tmp_path / "b.png")  # another format, the same decoded pixels


@needs_exiftool
def test_one_undo_undoes_a_killed_run_and_its_re_run(library):
    """A killed run wrote some photos; the re-run wrote the rest (and rewrote the first ones with
    the same estimate, which changes nothing). One undo-exif must put every photo back."""
    db, lib = library
    first = locate(lib / "02.jpg", lib / "08.jpg", "--db", db, "--write-exif")  # as far as the kill let it
    assert first.exit_code == 0, first.output
    from geoloc.outputs.undo_journal import journals

    (killed,) = journals()
    lines = killed.read_text().splitlines(keepends=True)
    assert json.loads(lines[-1]) == {"op": "end"}
    killed.write_text("".join(lines[:-1]))  # what a kill leaves: no end line
    rerun = locate(lib, "--db", db, "--write-exif")
    assert rerun.exit_code == 0, rerun.output
    written = [lib / f"{n}.jpg" for n in LUND_QUERIES]
    assert all(exif_gps(p)["GPSProcessingMethod"].startswith("geoloc") for p in written)
    undo = CliRunner().invoke(app, ["undo-exif"])
    assert undo.exit_code == 0, undo.output
    assert f"GPS put back in {len(written)} photos" in undo.stderr, undo.stderr
    for p in written:
        assert "GPSLatitude" not in exif_gps(p), (p.name, undo.stderr, rerun.stderr, first.stderr)
    again = CliRunner().invoke(app, ["undo-exif"])
    assert again.exit_code == 1 and "nothing to undo" in again.stderr, again.output


def test_a_photo_on_a_read_only_file_system_is_named_as_such(library, monkeypatch):
    """chmod cannot help there: the advice names the file system."""
    db, lib = library
    photo = lib / "02.jpg"
    real_statvfs, real_access = os.statvfs, os.access

    class ReadOnly:
        def __init__(self, st):
            self._st = st

        def __getattr__(self, name):
            return getattr(self._st, name)

        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", lambda p: ReadOnly(real_statvfs(p)))
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if mode & os.W_OK else real_access(p, mode, **kw))
    result = locate(photo, "--db", db, "--write-exif")
    assert "read-only file system" in result.stderr and "make it writable" not in result.stderr, result.stderr


@needs_exiftool
def test_a_photo_with_a_240_byte_name_is_written(library):
    db, lib = library
    photo = lib / ("x" * 236 + ".jpg")
    (lib / "02.jpg").rename(photo)
    result = locate(photo, "--db", db, "--write-exif")
    assert result.exit_code == 0 and "EXIF GPS written into 1 photo" in result.stderr, result.stderr
    assert exif_gps(photo)["GPSProcessingMethod"].startswith("geoloc")
    assert CliRunner().invoke(app, ["undo-exif"]).exit_code == 0
    assert "GPSLatitude" not in exif_gps(photo)
    assert sorted(p.name for p in lib.iterdir() if p.name.startswith(".")) == []


@needs_exiftool
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="only root can give a file away")
def test_write_and_undo_keep_the_photos_owner_mode_and_times(library):
    """Run as root (a container, a NAS's cron job): the photo stays its owner's, unreadable to
    others, and keeps its times, through the write and through the undo."""
    db, lib = library
    photo = lib / "02.jpg"
    os.chown(photo, 1234, 2345)
    photo.chmod(0o640)
    os.utime(photo, ns=(1_000_000_000_123_456_789, 1_000_000_000_987_654_321))

    def kept():
        st = photo.stat()
        return st.st_uid, st.st_gid, stat_mode(st), st.st_atime_ns, st.st_mtime_ns

    before = kept()
    assert locate(photo, "--db", db, "--write-exif").exit_code == 0
    assert exif_gps(photo)["GPSProcessingMethod"].startswith("geoloc")
    assert kept()[:3] == before[:3] and kept()[4] == before[4]
    undo = CliRunner().invoke(app, ["undo-exif"])
    assert undo.exit_code == 0, undo.output
    assert "GPSLatitude" not in exif_gps(photo)
    assert kept()[:3] == before[:3] and kept()[4] == before[4]


def stat_mode(st) -> int:
    import stat as stat_module

    return stat_module.S_IMODE(st.st_mode)


@needs_exiftool
def test_a_symlinked_photo_is_written_at_its_target_and_stays_a_link(library, tmp_path):
    """The link is the library's name for a photo that lives elsewhere: the photo itself gets the
    GPS (its temporary file beside it, where the rename must happen), the link stays a link, and
    nothing new appears in the folder named."""
    db, lib = library
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "real.jpg"
    (lib / "02.jpg").rename(target)
    link = lib / "02.jpg"
    link.symlink_to(target)
    names = sorted(p.name for p in lib.iterdir())
    result = locate(link, "--db", db, "--write-exif")
    assert result.exit_code == 0 and "EXIF GPS written into 1 photo" in result.stderr, result.stderr
    assert link.is_symlink() and os.readlink(link) == os.fspath(target)
    assert exif_gps(target)["GPSProcessingMethod"].startswith("geoloc")
    assert sorted(p.name for p in lib.iterdir()) == names and sorted(p.name for p in elsewhere.iterdir()) == ["real.jpg"]
    assert CliRunner().invoke(app, ["undo-exif"]).exit_code == 0
    assert link.is_symlink() and "GPSLatitude" not in exif_gps(target)
