"""Input a hostile tester (or an old archive) brings: names that are terminal commands or markup,
a full disk, read-only media, corrupt EXIF, a folder of junk. Each ends in clear lines, never a
traceback, and nothing already stored is lost."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from geoloc.cli import app

OSC = "\x1b]0;pwned\x07\x1b[2J"  # retitles the window, clears the screen


def run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    return result


def _no_raw_controls(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text, repr(text[:300])


def test_names_are_data_everywhere_they_are_shown(tiny_model, lund_dir, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in (1, 3, 5, 7, 9):
        shutil.copy2(lund_dir / f"{i:02d}.jpg", photos / f"{i:02d}.jpg")
    hostile = [f"evil{OSC}.jpg", "two\nlines.jpg", "tab\there.jpg", "right\u202egpj.exe.jpg", "[red]markup[x].jpg"]
    for name, src in zip(hostile, (11, 13, 15, 17, 19)):
        shutil.copy2(lund_dir / f"{src:02d}.jpg", photos / name)
    (photos / f"broken{OSC}.jpg").write_bytes(b"not a photo")

    indexed = run("index", photos, "--db", tmp_path / "db", "--model", tiny_model, "--json")
    assert indexed.exit_code == 0, indexed.output
    _no_raw_controls(indexed.stderr)
    assert "broken\\x1b]0;pwned\\x07" in indexed.stderr  # the warning names the file, escaped
    report = json.loads(indexed.stdout)
    assert report["errors"] == 1 and report["error_files"][0]["path"].endswith(f"broken{OSC}.jpg")

    listed = run("photos", "--db", tmp_path / "db")
    _no_raw_controls(listed.stdout)
    lines = listed.stdout.splitlines()
    assert len(lines) == 10  # one photo, one line, whatever its name
    assert any(line.startswith('"') and "two\\nlines.jpg" in line for line in lines)
    assert any("[red]markup[x].jpg" in line for line in lines)
    exact = {Path(r["path"]).name for r in json.loads(run("photos", "--db", tmp_path / "db", "--json").stdout)}
    assert set(hostile) <= exact  # JSON carries the names exactly

    located = run("locate", photos / hostile[0], photos / hostile[4], "--db", tmp_path / "db")
    assert located.exit_code == 0, located.output
    _no_raw_controls(located.stdout + located.stderr)
    wide = CliRunner(env={"COLUMNS": "200"}).invoke(
        app, ["locate", str(photos / hostile[0]), str(photos / hostile[4]), "--db", str(tmp_path / "db")])
    assert "[red]" in wide.stdout  # shown, not taken as a colour (at 80 columns it is cut from the left)


@pytest.mark.parametrize("db_name", ["mk[/x]db", "trip [paris 2019]/db"])
def test_a_database_name_with_brackets_is_shown_as_named(tiny_model, lund_dir, tmp_path, db_name):
    db = tmp_path / db_name
    result = run("index", lund_dir / "01.jpg", lund_dir / "03.jpg", "--db", db, "--model", tiny_model, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["db"] == str(db)
    assert str(db) in result.stderr  # the summary's title, not eaten as markup
    assert run("check", "--db", db).exit_code == 0
    assert str(db) in run("check", "--db", db).stderr


def test_a_name_that_is_not_utf8_round_trips_through_json(tiny_model, lund_dir, tmp_path):
    if os.name != "posix":
        pytest.skip("POSIX file names are bytes")
    photos = tmp_path / "photos"
    photos.mkdir()
    name = os.fsdecode(b"caf\xe9.jpg")
    shutil.copy2(lund_dir / "01.jpg", photos / name)
    shutil.copy2(lund_dir / "03.jpg", photos / "03.jpg")
    assert run("index", photos, "--db", tmp_path / "db", "--model", tiny_model).exit_code == 0
    out = run("photos", "--db", tmp_path / "db", "--json").stdout
    assert "\\udce9" in out
    paths = {os.fsencode(r["path"]) for r in json.loads(out)}
    assert os.fsencode(photos / name) in paths
    plain = run("photos", "--db", tmp_path / "db").stdout
    assert "caf\\xe9.jpg" in plain


def test_a_full_disk_is_one_line_naming_the_file_and_loses_nothing(tiny_model, lund_dir, tmp_path, monkeypatch):
    db = tmp_path / "db"
    assert run("index", lund_dir / "01.jpg", lund_dir / "03.jpg", "--db", db, "--model", tiny_model).exit_code == 0
    real = os.pwrite

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    result = run("index", lund_dir / "05.jpg", lund_dir / "07.jpg", "--db", db, "-q")
    monkeypatch.setattr(os, "pwrite", real)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "No space left on device" in lines[0] and "descriptors.f32" in lines[0] and str(db) in lines[0]
    assert not list(db.glob(".*.tmp"))
    assert run("check", "--db", db).exit_code == 0
    again = json.loads(run("index", lund_dir / "05.jpg", lund_dir / "07.jpg", "--db", db, "--json").stdout)
    assert (again["indexed"], again["total"]) == (2, 4)


def test_a_read_only_database_with_a_wal_and_no_shm_shows_its_photos(tiny_model, lund_dir, tmp_path):
    """On read-only media the WAL cannot be opened in place: its commits must not vanish."""
    import sqlite3

    db = tmp_path / "db"
    assert run("index", lund_dir / "01.jpg", lund_dir / "03.jpg", "--db", db, "--model", tiny_model).exit_code == 0
    # What a crash leaves: commits still in the WAL, no -shm.
    conn = sqlite3.connect(db / "photos.sqlite")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("UPDATE photos SET taken_at = 'in the wal'")
    conn.commit()
    wal = (db / "photos.sqlite-wal").read_bytes()
    conn.close()  # (closing checkpoints; put the WAL back as the crash left it)
    (db / "photos.sqlite-wal").write_bytes(wal)
    (db / "photos.sqlite-shm").unlink(missing_ok=True)
    mode = db.stat().st_mode
    db.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(db, os.W_OK):  # root writes anywhere: read the way read-only media is read
            from geoloc.database import sqlite as dbsqlite

            file = db / "photos.sqlite"
            conn = dbsqlite._read_only_media(db, file, "file:" + dbsqlite._uri_path(file) + "?mode=ro")
            assert conn.execute("SELECT COUNT(*), MIN(taken_at) FROM photos").fetchone() == (2, "in the wal")
            return
        rows = json.loads(run("photos", "--db", db, "--json").stdout)
        assert len(rows) == 2 and {r["taken_at"] for r in rows} == {"in the wal"}
    finally:
        db.chmod(mode)


def test_corrupt_exif_is_not_pillows_two_raw_lines(tiny_model, lund_dir, tmp_path):
    data = bytearray((lund_dir / "01.jpg").read_bytes())
    tiff = data.find(b"Exif\0\0") + 6
    fmt = ">" if data[tiff:tiff + 2] == b"MM" else "<"
    entry = tiff + struct.unpack(fmt + "I", data[tiff + 4:tiff + 8])[0] + 2
    data[entry + 2:entry + 12] = struct.pack(fmt + "HII", 2, 1000, 0xFFFF0)  # a string past the end
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "corrupt_exif.jpg").write_bytes(bytes(data))
    shutil.copy2(lund_dir / "03.jpg", photos / "03.jpg")
    import subprocess
    import sys

    # A real process: pytest resets warning filters around each test, a user's shell does not.
    result = subprocess.run([sys.executable, "-m", "geoloc", "index", str(photos), "--db", str(tmp_path / "db"),
                             "--model", "lite0-gem", "--max-side", "64", "--json", "--quiet"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "UserWarning" not in result.stderr, result.stderr
    assert result.stderr == "" and json.loads(result.stdout)["indexed"] == 2


def test_a_folder_of_junk_into_a_new_database_names_every_file(tiny_model, tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(12):
        (junk / f"junk{i:02d}.jpg").write_bytes(b"<html>not a photo</html>")
    result = run("index", junk, "--db", tmp_path / "db", "--model", tiny_model, "--vocabulary-photos", "5")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1
    warned = [line for line in lines if line.startswith("warning:")]
    assert len(warned) == 12 and all("an HTML page" in line for line in warned)
    assert lines[-1].startswith("error:") and "12 of the 12 photos tried could not be read" in lines[-1]


# --------------------------------------------------------------------------------------------
# Issue 19
# --------------------------------------------------------------------------------------------


def test_json_gives_a_name_that_is_not_utf8_in_bytes_too(tiny_model, lund_dir, tmp_path):
    """jq and node read a lone \\udcXX escape as U+FFFD and lose the byte: such a name also
    comes as the hex of its bytes, and only such a name."""
    if os.name != "posix":
        pytest.skip("POSIX file names are bytes")
    photos = tmp_path / "photos"
    photos.mkdir()
    odd = photos / os.fsdecode(b"caf\xe9.jpg")
    shutil.copy2(lund_dir / "01.jpg", odd)
    shutil.copy2(lund_dir / "03.jpg", photos / "03.jpg")
    (photos / os.fsdecode(b"broken\xff.jpg")).write_bytes(b"not a photo")
    indexed = json.loads(run("index", photos, "--db", tmp_path / "db", "--model", tiny_model, "--json").stdout)
    (error,) = indexed["error_files"]
    assert bytes.fromhex(error["path_bytes"]) == os.fsencode(photos / os.fsdecode(b"broken\xff.jpg"))
    rows = {Path(r["path"]).name: r for r in json.loads(run("photos", "--db", tmp_path / "db", "--json").stdout)}
    assert bytes.fromhex(rows[odd.name]["path_bytes"]) == os.fsencode(odd)
    assert "path_bytes" not in rows["03.jpg"]
    (answer,) = json.loads(run("locate", odd, "--db", tmp_path / "db", "--json").stdout)
    assert bytes.fromhex(answer["query_bytes"]) == os.fsencode(odd)
    (answer,) = json.loads(run("locate", lund_dir / "05.jpg", "--db", tmp_path / "db", "--json").stdout)
    by_path = {c["path"]: c for c in answer["candidates"]}
    assert bytes.fromhex(by_path[os.fspath(odd)]["path_bytes"]) == os.fsencode(odd)
    assert "path_bytes" not in by_path[os.fspath(photos / "03.jpg")]
    geo = json.loads(run("locate", odd, "--db", tmp_path / "db", "--geojson").stdout)
    assert bytes.fromhex(geo["features"][0]["properties"]["query_bytes"]) == os.fsencode(odd)


def _deep_folder(root: Path, past: int) -> Path:
    """Folders nested until their path is longer than ``past`` bytes, made through folder handles
    (no path that long can be passed to the system); returns the deepest, as a path."""
    fd = os.open(root, os.O_RDONLY)
    here, name = root, "d" * 200
    try:
        while len(os.fsencode(here)) <= past:
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd, here = child, here / name
    finally:
        os.close(fd)
    return here


def _write_beyond(folder: Path, name: str, data: bytes) -> None:
    """Write ``folder/name`` where ``folder`` is too deep to name: step down by handles."""
    parts = folder.parts
    fd = os.open("/", os.O_RDONLY)
    try:
        for part in parts[1:]:
            child = os.open(part, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        out = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, data)
        os.close(out)
    finally:
        os.close(fd)


def test_photos_past_the_path_limit_are_named_as_errors(tiny_model, lund_dir, tmp_path):
    """No program can open them by their path; indexing must say so for each, not skip them."""
    if not hasattr(os, "pathconf"):
        pytest.skip("no PATH_MAX here")
    path_max = os.pathconf(tmp_path, "PC_PATH_MAX")
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy2(lund_dir / "01.jpg", photos / "01.jpg")
    shutil.copy2(lund_dir / "03.jpg", photos / "03.jpg")
    # One photo just past the limit in a folder within it, two more in a folder past it.
    near = _deep_folder(photos, path_max - 230)
    deeper = _deep_folder(near, path_max + 10) if len(os.fsencode(near)) < path_max else near
    data = (lund_dir / "05.jpg").read_bytes()
    just_past = "x" * (path_max - len(os.fsencode(near)) + 10) + ".jpg"
    _write_beyond(near, just_past, data)
    _write_beyond(deeper, "a.jpg", data)
    _write_beyond(deeper, "b.jpg", data)
    result = run("index", photos, "--db", tmp_path / "db", "--model", tiny_model, "--json")
    report = json.loads(result.stdout)
    assert report["indexed"] == 2 and report["errors"] == 3, result.output
    reasons = {Path(e["path"]).name: e["reason"] for e in report["error_files"]}
    assert set(reasons) == {just_past, "a.jpg", "b.jpg"}
    assert all("path too long" in r and "PATH_MAX" in r for r in reasons.values())


def test_a_name_over_the_file_systems_name_limit_is_named_as_an_error(tiny_model, lund_dir, tmp_path, monkeypatch):
    """(Made with a lowered limit: no file system here holds a name past its own NAME_MAX.)"""
    from geoloc.photos import discovery

    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy2(lund_dir / "01.jpg", photos / "01.jpg")
    shutil.copy2(lund_dir / "03.jpg", photos / ("long" * 10 + ".jpg"))
    monkeypatch.setattr(discovery, "_name_max", lambda folder: 20)
    errors = []
    found = list(discovery.discover([photos], on_error=errors.append))
    assert found == [photos / "01.jpg"]
    (error,) = errors
    assert error.path.name == "long" * 10 + ".jpg" and "NAME_MAX" in error.reason and "44 bytes" in error.reason


def test_csv_warns_once_of_names_a_spreadsheet_would_run(tiny_model, lund_dir, tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    names = ["=cmd.jpg", "+1.jpg", "@x.jpg", "plain.jpg"]
    for name, src in zip(names, (1, 3, 5, 7)):
        shutil.copy2(lund_dir / f"{src:02d}.jpg", photos / name)
    db = tmp_path / "db"
    assert run("index", photos, "--db", db, "--model", tiny_model).exit_code == 0
    monkeypatch.chdir(photos)  # `geoloc locate . --csv`, the recipe: names as they are in the folder
    plain = run("locate", ".", "--db", db, "--csv", "--min-confidence", "low")
    assert plain.exit_code == 0, plain.output
    assert sorted(line.split(",")[0] for line in plain.stdout.splitlines()[1:]) == sorted(names)
    warned = [line for line in plain.stderr.splitlines() if "spreadsheet" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: 3 file names in the CSV start with =, +, - or @")
    assert "--csv-safe" in warned[0]
    safe = run("locate", ".", "--db", db, "--csv", "--csv-safe", "--min-confidence", "low")
    assert sorted(line.split(",")[0] for line in safe.stdout.splitlines()[1:]) == sorted(
        ["'=cmd.jpg", "'+1.jpg", "'@x.jpg", "plain.jpg"])
    assert "spreadsheet" not in safe.stderr
    assert run("locate", ".", "--db", db, "--csv-safe").exit_code == 2  # without --csv
