"""`geoloc index` as users run it, on the real photos in ../shared/data.

Every run uses the offline model lite0-vlad at --max-side 224 so the suite stays fast.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from geoloc.cli import app
from geoloc.database import Database

FAST = ["--model", "lite0-vlad", "--max-side", "224", "--workers", "2"]


def run_index(*args: str, expect: int = 0) -> tuple[dict | None, str]:
    result = CliRunner().invoke(app, ["index", *map(str, args)])
    assert result.exit_code == expect, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    data = json.loads(result.stdout) if "--json" in args and expect == 0 else None
    return data, result.stderr


def test_a_broken_link_among_the_named_photos_is_one_error_and_the_rest_is_indexed(lund_dir, tmp_path,
                                                                                  monkeypatch):
    """``geoloc index photos/*.jpg`` where one photo is a link whose target went: one warning
    naming it, the others indexed (a missing PATH, a typo, still stops the run before any work)."""
    photos = copy_lund(lund_dir, tmp_path / "photos", names={"01.jpg", "03.jpg"})
    (photos / "02.jpg").symlink_to(tmp_path / "elsewhere" / "02.jpg")
    (photos / "notes.txt").write_text("not a photo")
    monkeypatch.chdir(tmp_path)  # named relative, as a shell's photos/* names them
    data, stderr = run_index(*sorted(Path("photos").iterdir()), "--db", tmp_path / "db", "--json", *FAST)
    assert (data["indexed"], data["errors"]) == (2, 2)
    assert data["error_files"][0]["reason"] == "broken symbolic link: the file it points to is gone"
    # every path in the report absolute, as the stored photos' are
    assert [e["path"] for e in data["error_files"]] == [str(photos / "02.jpg"), str(photos / "notes.txt")]
    assert f"warning: {photos / '02.jpg'}: broken symbolic link" in stderr  # the warnings name them so too
    _, stderr = run_index(str(tmp_path / "nothing-*.jpg"), "--db", tmp_path / "db", expect=1)
    assert "nothing-*.jpg: no file matches this pattern" in stderr  # as locate words it
    _, stderr = run_index(photos / "01.jpg", tmp_path / "typo.jpg", "--db", tmp_path / "db", expect=1)
    assert "typo.jpg: no such file or folder" in stderr


def copy_lund(lund_dir: Path, dest: Path, names=None) -> Path:
    dest.mkdir(parents=True)
    for src in sorted(lund_dir.glob("*.jpg")):
        if names is None or src.name in names:
            shutil.copy2(src, dest / src.name)
    return dest


@pytest.fixture(scope="module")
def lund_db(lund_dir, tmp_path_factory):
    """One indexed copy of the lund walk, shared by the read-only checks below."""
    root = tmp_path_factory.mktemp("lund_db")
    photos = copy_lund(lund_dir, root / "photos")
    data, stderr = run_index(photos, "--db", root / "db", "--json", *FAST)
    return root / "db", photos, data, stderr


def test_lund_first_run(lund_db):
    db, photos, data, stderr = lund_db
    assert data["model"] == "lite0-vlad"
    assert data["db"] == str(db)
    assert (data["total"], data["located"], data["unlocated"]) == (29, 29, 0)
    assert (data["indexed"], data["unchanged"], data["errors"], data["removed"]) == (29, 0, 0, 0)
    assert data["error_files"] == []
    assert data["vocabulary"] == "fitted"
    assert "29 located" in stderr  # the summary for people, on stderr
    # The summary's rate says what it measures, apart from the bars' own (each phase alone).
    assert re.search(r"time +[\d.]+ s +[\d.]+ photos/s in all \(bars: per phase\)", stderr), stderr
    assert "(29 photos)" in stderr and "(1 photos)" not in stderr
    with Database.open(db) as database:
        records, matrix = database.descriptor_matrix()
        assert sorted(r.path.name for r in records) == [f"{i:02d}.jpg" for i in range(1, 30)]
        assert all(r.path.is_absolute() and r.located for r in records)
        assert matrix.shape == (29, 64 * 320)
        np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-4)
        rec = database.get(photos / "01.jpg")
        assert rec.width == 1024 and rec.height == 768 and rec.sha256
        assert rec.lat == pytest.approx(55.7, abs=0.1) and rec.lon == pytest.approx(13.2, abs=0.1)
        assert database.manifest["preprocess"]["max_side"] == 224
        assert database.manifest["vocabulary_sha256"] and database.has_vocabulary()


def test_lund_rerun_is_incremental(lund_db):
    db, photos, _, _ = lund_db
    data, _ = run_index(photos, "--db", db, "--json")  # no --model: the database keeps its own
    assert (data["total"], data["indexed"], data["unchanged"]) == (29, 0, 29)
    assert data["vocabulary"] == "stored"


def test_another_model_is_a_clear_error(lund_db):
    db, photos, _, _ = lund_db
    _, stderr = run_index(photos, "--db", db, "--model", "lite0-gem", expect=1)
    assert "lite0-vlad" in stderr and "lite0-gem" in stderr
    _, stderr = run_index(photos, "--db", db, "--max-side", "320", expect=1)
    assert "--max-side 224" in stderr


def test_missing_path_is_an_error(tmp_path, lund_dir):
    _, stderr = run_index(lund_dir, tmp_path / "nope", "--db", tmp_path / "db", *FAST, expect=1)
    assert "nope" in stderr and "no such file" in stderr
    assert not (tmp_path / "db").exists()  # nothing created for a run that could not start


def test_a_folder_without_photos_is_one_line_and_creates_no_database(tmp_path, lund_dir):
    """Why: the first command a new user types may name the wrong folder; it must say so, not
    create an empty database (and load a model) and report success."""
    folder = tmp_path / "documents"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("not a photo")
    (folder / ".hidden").mkdir()
    shutil.copy(lund_dir / "01.jpg", folder / ".hidden" / "01.jpg")  # hidden folders are skipped
    db = tmp_path / "home" / "databases" / "default"
    result = CliRunner().invoke(app, ["index", str(folder), "--db", str(db), *FAST, "--json"])
    assert result.exit_code == 1, result.output
    assert result.stdout == "" and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: no photos in {folder} (geoloc reads ") and ".jpg, " in line and ".dng, " in line
    assert "hidden folders are skipped" in line and line.endswith("no database was created")
    assert not (tmp_path / "home").exists()

    # An existing database: the same refusal, and the database untouched; --prune still runs.
    data, _ = run_index(*(lund_dir / f"0{i}.jpg" for i in range(1, 5)), "--db", db, *FAST, "--json")
    _, stderr = run_index(folder, "--db", db, *FAST, expect=1)
    assert stderr.strip().endswith("nothing to index, the database is unchanged")
    data, _ = run_index(folder, "--db", db, "--prune", "--json")
    assert data["total"] == 4 and data["removed"] == 0


def test_unwritable_database_is_an_error(tmp_path, lund_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    _, stderr = run_index(lund_dir / "01.jpg", "--db", blocker / "db", *FAST, expect=1)
    assert "cannot create database" in stderr
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        _, stderr = run_index(lund_dir / "01.jpg", "--db", ro / "db", *FAST, expect=1)
        assert "cannot create database" in stderr


def test_second_writer_is_refused(lund_db):
    db, photos, _, _ = lund_db
    with Database.open(db, write=True):
        _, stderr = run_index(photos, "--db", db, expect=1)
    assert f"is being written by another geoloc process (pid {os.getpid()})" in stderr


def test_touch_change_delete_prune(lund_dir, tmp_path):
    photos = copy_lund(lund_dir, tmp_path / "photos", names={"01.jpg", "02.jpg", "03.jpg", "04.jpg"})
    db = tmp_path / "db"
    run_index(photos, "--db", db, "--json", *FAST, "--vocabulary-photos", "4")
    with Database.open(db) as database:
        before = {r.path.name: r for r in database.photos()}

    st = (photos / "01.jpg").stat()
    os.utime(photos / "01.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    data, _ = run_index(photos, "--db", db, "--json")
    assert (data["indexed"], data["unchanged"]) == (0, 4)  # same content: only the mtime moved

    shutil.copyfile(lund_dir / "20.jpg", photos / "02.jpg")  # new content under an old name
    data, _ = run_index(photos, "--db", db, "--json")
    assert (data["indexed"], data["unchanged"], data["total"]) == (1, 3, 4)
    data, _ = run_index(photos, "--db", db, "--json")
    assert (data["indexed"], data["unchanged"]) == (0, 4)  # re-indexed exactly once
    with Database.open(db) as database:
        after = {r.path.name: r for r in database.photos()}
        assert after["02.jpg"].sha256 != before["02.jpg"].sha256
        assert after["02.jpg"].lat != before["02.jpg"].lat  # the new file's own GPS
        assert after["01.jpg"].row == before["01.jpg"].row
        assert database.dead_rows == 1

    (photos / "03.jpg").unlink()
    data, _ = run_index(photos, "--db", db, "--json")
    assert (data["removed"], data["total"]) == (0, 4)  # without --prune nothing is dropped
    data, _ = run_index(photos, "--db", db, "--json", "--prune")
    assert (data["removed"], data["total"], data["located"]) == (1, 3, 3)
    with Database.open(db) as database:
        assert database.dead_rows == 0  # --prune compacts the descriptor file
        assert database.get(photos / "03.jpg") is None
        records, matrix = database.descriptor_matrix()
        assert sorted(r.path.name for r in records) == ["01.jpg", "02.jpg", "04.jpg"]


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims to be width×height: what a decompression bomb looks like to Pillow."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_bad_files_get_one_line_each_and_the_run_goes_on(lund_dir, tmp_path):
    from PIL import Image

    photos = tmp_path / "mixed"
    (photos / "sub dir").mkdir(parents=True)
    good = {
        "plain.jpg": lund_dir / "05.jpg",
        "with space 'quote' \"double\".JPG": lund_dir / "06.jpg",
        "sub dir/åäö 東京.jpeg": lund_dir / "07.jpg",
    }
    if os.name == "posix":  # a name that is not valid UTF-8 (an old Latin-1 archive)
        good[os.fsdecode(b"latin1-\xe9t\xe9.jpg")] = lund_dir / "12.jpg"
    for name, src in good.items():
        shutil.copy2(src, photos / name)
    for i in range(8, 12):  # enough photos for the vocabulary
        shutil.copy2(lund_dir / f"{i:02d}.jpg", photos / f"{i:02d}.jpg")
    Image.new("RGB", (3000, 150), (120, 80, 40)).save(photos / "panorama.png")  # unlocated
    bad = {
        "empty.jpg": b"",
        "not-an-image.jpg": b"<!DOCTYPE html><html><body>404</body></html>",
        "truncated.jpg": (lund_dir / "01.jpg").read_bytes()[:2000],
    }
    for name, data in bad.items():
        (photos / name).write_bytes(data)
    _png_header_only(photos / "bomb.png", 60_000, 60_000)
    bad["bomb.png"] = b""

    data, stderr = run_index(photos, "--db", tmp_path / "db", "--json", *FAST)
    reasons = {Path(e["path"]).name: e["reason"] for e in data["error_files"]}
    assert set(reasons) == set(bad), reasons
    assert data["errors"] == len(bad)
    assert "too large" in reasons["bomb.png"] and "empty" in reasons["empty.jpg"]
    for name in bad:  # one warning line naming the file
        assert sum(name in line and "warning" in line for line in stderr.splitlines()) == 1, stderr
    assert data["indexed"] == len(good) + 4 + 1 and data["unlocated"] == 1
    with Database.open(tmp_path / "db") as database:
        for name in good:
            record = database.get((photos / name).resolve())
            assert record is not None and record.located, name
        pano = database.get((photos / "panorama.png").resolve())
        assert pano is not None and not pano.located and (pano.width, pano.height) == (3000, 150)

    # `geoloc photos --unlocated` lists it, with the reason its EXIF gives.
    db = str(tmp_path / "db")
    listed = CliRunner().invoke(app, ["photos", "--db", db, "--unlocated", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [Path(r["path"]).name for r in rows] == ["panorama.png"]
    assert rows[0]["located"] is False and rows[0]["reason"] == "no EXIF data"
    everything = json.loads(CliRunner().invoke(app, ["photos", "--db", db, "--json"]).stdout)
    assert len(everything) == data["total"] and sum(r["reason"] is None for r in everything) == 8
    lines = CliRunner().invoke(app, ["photos", "--db", db, "--unlocated"])
    assert lines.stdout.splitlines() == [f"{photos.resolve() / 'panorama.png'}\tunlocated: no EXIF data"]
    assert "1 photo: 0 located, 1 unlocated" in lines.stderr
    csv_out = CliRunner().invoke(app, ["photos", "--db", db, "--located", "--csv"]).stdout
    assert csv_out.splitlines()[0].startswith("path,lat,lon,") and len(csv_out.splitlines()) == 9
    assert CliRunner().invoke(app, ["photos", "--db", db, "--located", "--unlocated"]).exit_code == 2

    # Geotagged later (the pixels unchanged, the EXIF new): the listing notices, and the re-run
    # stores the position, so the photo becomes a located reference.
    exif = Image.Exif()
    exif[0x8825] = {1: "N", 2: (55.0, 42.0, 0.0), 3: "E", 4: (13.0, 11.0, 0.0)}
    Image.open(photos / "panorama.png").convert("RGB").save(photos / "panorama.png", exif=exif)
    rows = json.loads(CliRunner().invoke(app, ["photos", "--db", db, "--unlocated", "--json"]).stdout)
    assert "has a position now" in rows[0]["reason"]
    data, _ = run_index(photos, "--db", db, "--json")
    assert (data["indexed"], data["unlocated"], data["located"]) == (1, 0, len(good) + 5)
    with Database.open(tmp_path / "db") as database:
        pano = database.get((photos / "panorama.png").resolve())
        assert pano.lat == pytest.approx(55.7) and pano.lon == pytest.approx(13.1833333)


@pytest.mark.slow
def test_all_exif_samples(exif_dir, tmp_path):
    """Every real-device file: no traceback, exit 0, every file with a position indexed."""
    data, stderr = run_index(exif_dir, "--db", tmp_path / "db", "--json", *FAST)
    scan = [json.loads(line) for line in (exif_dir / "exif_scan.jsonl").read_text().splitlines()]
    with_gps = {r["file"] for r in scan if r.get("er_lat") is not None or r.get("pil_lat") is not None}
    assert len(with_gps) == 18
    assert data["total"] + data["errors"] == len(scan)
    assert stderr.count("warning:") == data["errors"]  # one line per unusable file
    with Database.open(tmp_path / "db") as database:
        located = {r.path.relative_to(exif_dir.resolve()).as_posix() for r in database.photos() if r.located}
    assert located == with_gps
    assert data["located"] == 18


def test_quiet_prints_no_progress(lund_dir, tmp_path):
    photos = copy_lund(lund_dir, tmp_path / "p", names={f"{i:02d}.jpg" for i in range(1, 5)})
    result = CliRunner().invoke(app, ["index", str(photos), "--db", str(tmp_path / "db"), "--quiet",
                                      *FAST, "--vocabulary-photos", "4"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == ""


# --- extraction on its own --------------------------------------------------------------------


def test_descriptor_does_not_depend_on_the_batch(lund_dir):
    import torch

    from geoloc.descriptors.extract import ExtractConfig, Extractor, iter_batches, Decoded
    from geoloc.models.registry import load_model

    model = load_model("lite0-gem")  # no vocabulary to fit: the batching alone is under test
    paths = sorted(lund_dir.glob("*.jpg"))[:5]
    alone = Extractor(model, ExtractConfig(max_side=160, batch_size=1, workers=1, hash_files=False))
    together = Extractor(model, ExtractConfig(max_side=160, batch_size=4, workers=2, hash_files=False))
    a = {i[0].path: d[0] for i, d in alone.descriptors(paths)}
    b = {}
    for items, desc in together.descriptors(paths):
        b.update({item.path: row for item, row in zip(items, desc)})
    assert together.stats.batches == 2 and alone.stats.batches == 5
    for p in paths:
        np.testing.assert_allclose(a[p], b[p], atol=1e-5)

    # Photos of different shapes never share a batch.
    items = [Decoded(path=Path(f"{i}"), tensor=torch.zeros(3, 10 + (i % 2), 12)) for i in range(6)]
    batches = list(iter_batches(items, batch_size=2))
    assert all(len({tuple(i.tensor.shape) for i in batch}) == 1 for batch in batches)
    assert sorted(len(b) for b in batches) == [1, 1, 2, 2]


def test_model_file_is_recorded_by_its_resolved_path(lund_dir, tmp_path, monkeypatch):
    import torch

    from geoloc.models.model import build_model
    from geoloc.models.modelfile import save_model_file

    model_file = save_model_file(build_model("lite0", "gem", pretrained_backbone=False),
                                 tmp_path / "models" / "mine.safetensors")
    photos = copy_lund(lund_dir, tmp_path / "p", names={"01.jpg", "02.jpg"})
    monkeypatch.chdir(tmp_path)
    data, _ = run_index(photos, "--db", "db", "--json", "--model", "models/mine.safetensors",
                        "--max-side", "160")
    assert data["model"] == str(model_file.resolve()) and data["indexed"] == 2
    assert data["vocabulary"] is None  # GeM pooling: nothing to fit
    data, _ = run_index(photos, "--db", "db", "--json", "--model", str(model_file))
    assert data["unchanged"] == 2
    other = save_model_file(build_model("lite0", "gem", pretrained_backbone=False),
                            tmp_path / "models" / "other.safetensors")
    _, stderr = run_index(photos, "--db", "db", "--model", str(other), expect=1)
    assert "mine.safetensors" in stderr and "other.safetensors" in stderr
    retrained = build_model("lite0", "gem", pretrained_backbone=False)
    with torch.no_grad():
        retrained.pool.p.fill_(4.0)  # same file name, other weights
    save_model_file(retrained, model_file)
    data, _ = run_index(photos, "--db", "db", "--json")  # nothing to compute: the model unused
    assert (data["indexed"], data["unchanged"]) == (0, 2)
    shutil.copy2(lund_dir / "03.jpg", photos / "03.jpg")  # a photo the new weights would mix in
    _, stderr = run_index(photos, "--db", "db", expect=1)
    assert "changed" in stderr and "mine.safetensors" in stderr


def test_a_rerun_with_nothing_to_do_loads_no_model(lund_db):
    """Re-running over an unchanged archive is the common case: it must not pay for torch and
    the weights (seconds, and hundreds of MiB) when no photo needs the network."""
    import subprocess
    import sys

    db, photos, _, _ = lund_db
    code = (
        "import sys, json\n"
        "from typer.testing import CliRunner\n"
        "from geoloc.cli import app\n"
        f"r = CliRunner().invoke(app, ['index', {str(photos)!r}, '--db', {str(db)!r}, '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(json.dumps([json.loads(r.stdout)['unchanged'], 'torch' in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [29, False]


def test_a_model_path_that_is_no_file_is_refused_at_once(tmp_path, lund_dir):
    """``--model /dev/zero`` would read forever; a device, a pipe or a folder is refused."""
    import time

    start = time.perf_counter()
    result = CliRunner().invoke(app, ["index", str(lund_dir / "01.jpg"), "--db", str(tmp_path / "db"),
                                      "--model", "/dev/zero"])
    assert result.exit_code == 1 and time.perf_counter() - start < 30
    assert "not a regular file" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "db").exists()


def _png_bomb(path: Path, width: int, height: int) -> None:
    """A real, complete PNG of width×height transparent black: tiny on disk, huge decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    row = bytes(1 + width * 4)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.mark.slow
def test_memory_bombs_under_the_pixel_limit_cost_no_memory(lund_dir, tmp_path):
    """Two 970 KB PNGs of 15800×15800 RGBA (249.6 MP, under the 250 MP pixel limit) took 5.4 and
    10.3 GB. Decoding is bounded by bytes: they are refused from their header, with the numbers,
    and the run's peak memory stays that of ordinary photos."""
    import subprocess
    import sys

    ordinary = tmp_path / "ordinary"
    bombs = tmp_path / "bombs"
    for folder in (ordinary, bombs):
        folder.mkdir()
        for i in (1, 3, 5):
            shutil.copy2(lund_dir / f"{i:02d}.jpg", folder / f"{i:02d}.jpg")
    _png_bomb(bombs / "bomb1.png", 15800, 15800)
    shutil.copy2(bombs / "bomb1.png", bombs / "bomb2.png")
    assert (bombs / "bomb1.png").stat().st_size < 2_000_000

    def peak_rss(folder: Path) -> tuple[int, str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "geoloc", "index", str(folder), "--db", str(tmp_path / f"db-{folder.name}"),
             "--model", "lite0-gem", "--max-side", "224", "--workers", "2", "--quiet"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stderr = proc.stderr.read().decode()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        assert proc.returncode == 0, stderr
        return usage.ru_maxrss * 1024, stderr

    base, _ = peak_rss(ordinary)
    peak, stderr = peak_rss(bombs)
    assert peak <= 1.5 * base, (peak / 2**20, base / 2**20)
    lines = [line for line in stderr.splitlines() if "bomb" in line]
    assert len(lines) == 2 and all("too large to decode in memory" in line and "15800×15800" in line
                                   for line in lines), stderr
