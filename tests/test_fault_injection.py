"""Every file of a real database, damaged every way a disk or a person damages files.

For each file and fault, `photos`, `locate`, `index` and `check` must each end in the same
answers as the undamaged database or in one line that names the damage, never a traceback, an
internal error, or another answer with exit 0; and `index --repair` must then bring back the
same answers. The database holds the odd Lund frames, indexed with the tiny test model (whose
NetVLAD layer has a fitted vocabulary, so every file of a database is there to damage).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from clirun import DenseRunner
from geoloc.cli import app

FILES = ("manifest.json", "photos.sqlite", "descriptors.f32", "descriptors.idx", "maps.i8", "vocabulary.safetensors")


def _garbage(path: Path) -> None:
    """4 KiB of garbage in the middle (all of a file smaller than that)."""
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.seek(max(0, size // 2 - 2048))
        fh.write(bytes((i * 37 + 11) % 251 for i in range(4096)))


FAULTS = {
    "deleted": lambda p: p.unlink(),
    "truncated to zero": lambda p: os.truncate(p, 0),
    "truncated to half": lambda p: os.truncate(p, p.stat().st_size // 2),
    "garbage in the middle": _garbage,
}


def run(*args):
    result = DenseRunner().invoke(app, [str(a) for a in args])  # damage, not verification
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    return result


def answers(db: Path, queries: list[Path]):
    """What locate says (candidate paths and scores), or the one-line error."""
    result = run("locate", *queries, "--db", db, "--json", "--top-k", "5")
    if result.exit_code:
        return None, result
    return [[(c["path"], c["score"]) for c in o["candidates"]] for o in json.loads(result.stdout)], result


def one_damage_line(result, db: Path) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "damaged" in lines[0] and str(db) in lines[0], lines[0]
    assert "--repair" in lines[0] or "new --db" in lines[0], lines[0]


@pytest.fixture(scope="module")
def built(tiny_model, lund_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    photos = root / "photos"
    photos.mkdir()
    for i in range(1, 30, 2):
        shutil.copy2(lund_dir / f"{i:02d}.jpg", photos / f"{i:02d}.jpg")
    db = root / "db"
    result = run("index", photos, "--db", db, "--model", tiny_model, "-q")
    assert result.exit_code == 0, result.output
    queries = [lund_dir / "02.jpg", lund_dir / "16.jpg", photos / "07.jpg"]
    reference, _ = answers(db, queries)
    assert reference is not None
    return photos, db, queries, reference


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("name", FILES)
def test_damage_is_named_or_harmless_and_repair_brings_the_answers_back(built, tmp_path, name, fault):
    photos, clean, queries, reference = built
    db = tmp_path / "db"
    shutil.copytree(clean, db, ignore=shutil.ignore_patterns("lock"))
    FAULTS[fault](db / name)

    got, result = answers(db, queries)
    if got is None:
        one_damage_line(result, db)
    else:
        assert got == reference  # harmless: a mirror whose copy in photos.sqlite is intact

    listed = run("photos", "--db", db, "--json")
    if listed.exit_code:
        one_damage_line(listed, db)
    else:
        assert len(json.loads(listed.stdout)) == 15

    checked = run("check", "--db", db)
    assert checked.exit_code == 1, f"{name} {fault}: check found nothing"
    assert all(line.startswith("error:") for line in checked.stderr.strip().splitlines()[:-1])

    indexed = run("index", photos, "--db", db, "-q")
    one_damage_line(indexed, db)  # never writes over damage

    repaired = run("index", photos, "--db", db, "--repair", "--json", "-q")
    assert repaired.exit_code == 0, repaired.output
    report = json.loads(repaired.stdout)
    assert report["total"] == 15 and report["repair"]["unrepairable"] == []
    assert answers(db, queries)[0] == reference
    assert run("check", "--db", db).exit_code == 0
    assert run("index", photos, "--db", db, "--json", "-q").exit_code == 0


def test_a_lost_photos_sqlite_is_rebuilt_from_the_photos_without_the_network(built, tmp_path, monkeypatch):
    """The descriptors survive a lost photos.sqlite: each photo claims its own back by its
    content hash, so the repair runs no network at all."""
    photos, clean, queries, reference = built
    db = tmp_path / "db"
    shutil.copytree(clean, db, ignore=shutil.ignore_patterns("lock"))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db / 'photos.sqlite'}{suffix}").unlink(missing_ok=True)
    from geoloc.descriptors import extract

    monkeypatch.setattr(extract.Extractor, "descriptors", lambda *a, **k: pytest.fail("ran the network"))
    report = json.loads(run("index", photos, "--db", db, "--repair", "--json", "-q").stdout)
    assert report["repair"]["claimed"] == 15 and report["indexed"] == 0
    assert "photos.sqlite" in report["repair"]["rebuilt"][0]
    monkeypatch.undo()
    assert answers(db, queries)[0] == reference


def test_a_lost_manifest_with_another_model_wipes_nothing(built, tmp_path):
    photos, clean, queries, reference = built
    db = tmp_path / "db"
    shutil.copytree(clean, db, ignore=shutil.ignore_patterns("lock"))
    (db / "manifest.json").unlink()
    data = ("photos.sqlite", "descriptors.f32", "descriptors.idx", "maps.i8", "vocabulary.safetensors")
    before = {name: (db / name).read_bytes() for name in data}
    result = run("index", photos / "05.jpg", "--db", db, "--model", "lite0-gem")
    one_damage_line(result, db)
    assert {name: (db / name).read_bytes() for name in data} == before
    assert answers(db, queries)[0] == reference


def test_a_lost_row_counter_is_damage_and_repair_restores_it(built, tmp_path):
    photos, clean, queries, reference = built
    db = tmp_path / "db"
    shutil.copytree(clean, db, ignore=shutil.ignore_patterns("lock"))
    conn = sqlite3.connect(db / "photos.sqlite")
    with conn:
        conn.execute("DELETE FROM meta WHERE key = 'next_row'")
    conn.close()
    size = (db / "descriptors.f32").stat().st_size
    one_damage_line(run("index", photos, "--db", db, "-q"), db)
    assert (db / "descriptors.f32").stat().st_size == size  # nothing truncated
    assert run("index", photos, "--db", db, "--repair", "-q").exit_code == 0
    assert answers(db, queries)[0] == reference


def test_commits_lost_with_the_wal_come_back_by_content(built, tmp_path):
    """What a kill -9 plus a lost photos.sqlite-wal leaves: rows written and indexed by
    descriptors.idx, but no record of them. A plain re-run claims them back (no network)."""
    photos, clean, queries, reference = built
    db = tmp_path / "db"
    shutil.copytree(clean, db, ignore=shutil.ignore_patterns("lock"))
    conn = sqlite3.connect(db / "photos.sqlite")
    with conn:  # as if the last 5 commits had never reached the main file
        conn.execute("DELETE FROM photos WHERE row >= 10")
        conn.execute("UPDATE meta SET value = 10 WHERE key = 'next_row'")
    conn.close()
    report = json.loads(run("index", photos, "--db", db, "--json", "-q").stdout)
    assert (report["indexed"], report["total"]) == (0, 15)
    assert answers(db, queries)[0] == reference
    assert run("check", "--db", db).exit_code == 0


def test_a_geoloc_0_1_database_is_upgraded_in_place(built, tmp_path):
    """0.1.0 stored no row index and no copies: readers still read it, the first writer adds
    them (trusting what is stored), and from then on it is checked like any other."""
    photos, clean, queries, reference = built
    db = tmp_path / "db"
    shutil.copytree(clean, db, ignore=shutil.ignore_patterns("lock"))
    (db / "descriptors.idx").unlink()
    (db / "maps.i8").unlink()  # 0.1.0 stored no verification maps either
    conn = sqlite3.connect(db / "photos.sqlite")
    with conn:
        conn.execute("DELETE FROM meta WHERE key IN ('manifest', 'vocabulary')")
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    manifest = json.loads((db / "manifest.json").read_text())
    manifest["format"] = 1
    del manifest["maps"]
    (db / "manifest.json").write_text(json.dumps(manifest))
    assert answers(db, queries)[0] == reference
    assert "no checksums" in run("check", "--db", db).stderr
    assert run("index", photos, "--db", db, "-q").exit_code == 0
    assert (db / "descriptors.idx").stat().st_size == 15 * 48 and not (db / "maps.i8").exists()
    assert "15 descriptors verified" in run("check", "--db", db).stderr
    assert answers(db, queries)[0] == reference


def test_check_says_when_the_model_file_a_database_was_built_with_changed_or_went(tmp_path, lund_dir):
    """A model file overwritten by a later `geoloc finetune --out`, or deleted: `locate` would
    refuse the database after loading the model; `check` says so first, and names no repair
    (`--repair` cannot bring weights back)."""
    from geoloc.models.model import build_model
    from geoloc.models.modelfile import save_model_file

    model_file = save_model_file(build_model("lite0", "gem", pretrained_backbone=False), tmp_path / "mine.safetensors")
    db = tmp_path / "db"
    assert run("index", lund_dir / "01.jpg", lund_dir / "03.jpg", "--db", db, "--model", model_file,
               "--max-side", "96", "--quiet").exit_code == 0
    assert run("check", "--db", db).exit_code == 0
    save_model_file(build_model("lite0", "gem", pretrained_backbone=False), model_file)  # other weights
    checked = run("check", "--db", db)
    assert checked.exit_code == 1 and "now holds other weights" in checked.stderr
    assert "--repair" not in checked.stderr
    assert json.loads(run("check", "--db", db, "--json").stdout)["sound"] is False
    model_file.unlink()
    checked = run("check", "--db", db)
    assert checked.exit_code == 1 and "mine.safetensors is gone" in checked.stderr
