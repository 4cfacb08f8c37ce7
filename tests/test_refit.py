"""A vocabulary fitted on a few photos is fitted again once the database outgrows it.

The tiny test model learns its NetVLAD vocabulary from the photos as lite0-vlad does, in
milliseconds, so the whole cycle runs on the real Lund photos: a first run on 2 photos warns,
a run that brings the database to 4× that refits and indexes every photo again, and the result
equals a database indexed from scratch on the same photos.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from geoloc.cli import app
from geoloc.database import Database
from geoloc.database import swap

runner = CliRunner()


def _index(*args: str) -> tuple[int, dict | None, str]:
    result = runner.invoke(app, ["index", *args, "--json"])
    try:
        data = json.loads(result.stdout)
    except ValueError:
        data = None
    return result.exit_code, data, result.stderr


@pytest.fixture
def photos(tmp_path, lund_dir) -> Path:
    """Twelve Lund frames in a folder of their own (a test may remove one)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(1, 13):
        shutil.copy2(lund_dir / f"{i:02d}.jpg", folder / f"{i:02d}.jpg")
    return folder


def _descriptors(db: Path) -> dict[str, np.ndarray]:
    with Database.open(db) as database:
        records, matrix = database.descriptor_matrix(located_only=False)
        return {r.path.name: matrix[i] for i, r in enumerate(records)}


def test_few_photos_warn_then_the_grown_database_is_refitted_as_if_indexed_at_once(tmp_path, photos, tiny_model):
    db = tmp_path / "db"
    code, first, err = _index(str(photos / "01.jpg"), str(photos / "02.jpg"), "--db", str(db), "--model", tiny_model)
    assert code == 0, err
    assert first["vocabulary"] == "fitted" and first["vocabulary_photos"] == 2 and first["refit"] is None
    assert "fitted on only 2 photos" in err and "once the database holds 8" in err and "--refit" in err

    code, grown, err = _index(str(photos), "--db", str(db))
    assert code == 0, err
    assert grown["vocabulary"] == "refitted"
    assert grown["refit"] == {"vocabulary_photos_before": 2, "vocabulary_photos": 12, "reason": "grown",
                              "reextracted": 12}
    assert (grown["total"], grown["indexed"], grown["unchanged"], grown["errors"]) == (12, 10, 2, 0)
    assert not swap.building(db).exists() and not swap.retired(db).exists()

    scratch = tmp_path / "scratch"
    code, fresh, err = _index(str(photos), "--db", str(scratch), "--model", tiny_model)
    assert code == 0, err
    with Database.open(db) as a, Database.open(scratch) as b:
        assert a.manifest["vocabulary_sha256"] == b.manifest["vocabulary_sha256"]
    mine, theirs = _descriptors(db), _descriptors(scratch)
    assert sorted(mine) == sorted(theirs)
    for name in mine:
        np.testing.assert_allclose(mine[name], theirs[name], atol=1e-5)
    assert runner.invoke(app, ["check", "--db", str(db)]).exit_code == 0

    code, again, _ = _index(str(photos), "--db", str(db))  # 12 < 4 × 12: no refit, nothing to do
    assert (again["vocabulary"], again["refit"], again["indexed"]) == ("stored", None, 0)


def test_refit_on_request_and_not_while_a_stored_photo_is_gone(tmp_path, photos, tiny_model):
    db = tmp_path / "db"
    assert _index(str(photos), "--db", str(db), "--model", tiny_model, "--vocabulary-photos", "5")[0] == 0
    before = _descriptors(db)

    (photos / "07.jpg").unlink()
    code, _, err = _index(str(photos), "--db", str(db), "--refit", "--vocabulary-photos", "11")
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "no longer on disk" in lines[0] and "07.jpg" in lines[0] and "--prune" in lines[0]
    assert "Traceback" not in err
    assert _descriptors(db).keys() == before.keys()  # nothing dropped, nothing changed

    code, data, err = _index(str(photos), "--db", str(db), "--refit", "--prune", "--vocabulary-photos", "11")
    assert code == 0, err
    assert data["refit"]["reason"] == "requested" and data["refit"]["vocabulary_photos"] == 11
    assert (data["total"], data["removed"]) == (11, 1)
    assert "07.jpg" not in _descriptors(db)

    # The stored photos are all a refit needs: no PATH, as with --repair; a quoted glob works too.
    code, data, err = _index("--db", str(db), "--refit", "--vocabulary-photos", "8")
    assert code == 0, err
    assert (data["refit"]["vocabulary_photos"], data["total"]) == (8, 11)
    code, data, err = _index(str(photos / "0[1-3].jpg"), "--db", str(db))
    assert code == 0, err
    assert (data["unchanged"], data["total"]) == (3, 11)
    code, _, err = _index("--db", str(tmp_path / "nowhere"), "--refit")
    assert code == 1 and "no geoloc database at" in err and not (tmp_path / "nowhere").exists()


def test_a_refit_waits_while_a_stored_photo_is_unreadable_and_keeps_what_it_did(tmp_path, photos, tiny_model):
    db = tmp_path / "db"
    assert _index(str(photos / "01.jpg"), str(photos / "02.jpg"), "--db", str(db), "--model", tiny_model)[0] == 0
    before = _descriptors(db)
    (photos / "02.jpg").write_bytes(b"not a jpeg any more")  # stored, and now unreadable
    os.utime(photos / "02.jpg", (1, 1))
    code, data, err = _index(*[str(photos / f"{i:02d}.jpg") for i in (1, 3, 4, 5, 6, 7, 8, 9)], "--db", str(db))
    assert code == 0, err
    assert "was not fitted again" in err and "02.jpg" in err
    assert data["vocabulary"] == "stored" and data["refit"] is None
    assert data["indexed"] == 7 and data["total"] == 9  # the new photos, with the old vocabulary
    now = _descriptors(db)
    np.testing.assert_array_equal(now["02.jpg"], before["02.jpg"])
    assert swap.building(db).is_dir() and not swap.is_complete(swap.building(db))


def test_a_refit_cut_between_its_renames_is_finished_by_whoever_comes_next(tmp_path, photos, tiny_model):
    db = tmp_path / "db"
    assert _index(str(photos / "01.jpg"), str(photos / "02.jpg"), "--db", str(db), "--model", tiny_model)[0] == 0
    # What a refit leaves when killed after its new database was complete: built, marked, and
    # (second case) the old one already renamed away.
    from geoloc.indexing.run import IndexConfig, index_photos

    index_photos(sorted(photos.iterdir()), swap.building(db), IndexConfig(model=tiny_model, device="cpu"))
    swap.mark_complete(swap.building(db))
    (db / swap.RETIRED).write_text("geoloc\n")  # step 2: marked, then renamed away
    os.rename(db, swap.retired(db))

    listed = runner.invoke(app, ["photos", "--db", str(db), "--json"])  # a reader settles it
    assert listed.exit_code == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 12
    assert not swap.building(db).exists() and not (db / swap.DONE).exists()
    code, data, err = _index(str(photos), "--db", str(db))  # the writer removes the old folder
    assert code == 0, err
    assert (data["total"], data["indexed"], data["vocabulary_photos"]) == (12, 0, 12)
    assert not swap.retired(db).exists()


def test_a_complete_refit_left_beside_the_database_replaces_it_on_the_next_index(tmp_path, photos, tiny_model):
    db = tmp_path / "db"
    assert _index(str(photos / "01.jpg"), str(photos / "02.jpg"), "--db", str(db), "--model", tiny_model)[0] == 0
    from geoloc.indexing.run import IndexConfig, index_photos

    index_photos(sorted(photos.iterdir()), swap.building(db), IndexConfig(model=tiny_model, device="cpu"))
    swap.mark_complete(swap.building(db))
    code, data, err = _index(str(photos), "--db", str(db))
    assert code == 0, err
    assert (data["total"], data["vocabulary_photos"]) == (12, 12)
    assert not swap.building(db).exists() and not swap.retired(db).exists()


def test_a_refit_cut_short_resumes_where_it_stopped(tmp_path, photos, tiny_model, monkeypatch):
    db = tmp_path / "db"
    assert _index(str(photos / "01.jpg"), str(photos / "02.jpg"), "--db", str(db), "--model", tiny_model)[0] == 0
    before = _descriptors(db)
    real_add = Database.add_batch
    calls = []

    def add_then_ctrl_c(self, *args, **kwargs):  # Ctrl-C after the refit's third batch
        real_add(self, *args, **kwargs)
        if self.path == swap.building(db).absolute():
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt

    monkeypatch.setattr(Database, "add_batch", add_then_ctrl_c)
    code, _, err = _index(str(photos), "--db", str(db), "--batch-size", "2")
    assert code == 130
    assert "interrupted while fitting the vocabulary again" in err and "unchanged" in err
    assert _descriptors(db).keys() == before.keys()  # the old database still answers, as it was
    monkeypatch.setattr(Database, "add_batch", real_add)

    code, data, err = _index(str(photos), "--db", str(db), "--batch-size", "2")
    assert code == 0, err
    assert data["vocabulary"] == "refitted" and data["total"] == 12 and data["vocabulary_photos"] == 12
    assert data["refit"]["reextracted"] == 6  # the 6 stored before Ctrl-C were kept


def test_a_database_behind_a_symbolic_link_is_refitted_where_it_lives(tmp_path, photos, tiny_model):
    real = tmp_path / "disk" / "db"
    real.parent.mkdir()
    link = tmp_path / "db"
    assert _index(str(photos / "01.jpg"), str(photos / "02.jpg"), "--db", str(real), "--model", tiny_model)[0] == 0
    link.symlink_to(real)
    for _ in range(2):  # twice: the second swap must find nothing of the first in its way
        code, data, err = _index(str(photos), "--db", str(link), "--refit")
        assert code == 0, err
        assert data["vocabulary"] == "refitted"
    assert link.is_symlink() and real.is_dir() and not real.is_symlink()
    assert sorted(p.name for p in real.parent.iterdir()) == ["db"]
    assert runner.invoke(app, ["check", "--db", str(link)]).exit_code == 0


def test_a_refit_that_cannot_be_built_lets_the_run_go_on(tmp_path, photos, tiny_model, monkeypatch):
    """A full disk (a refit needs room for a second copy) must not stop the photos coming in."""
    from geoloc.indexing import refit
    from geoloc.errors import DatabaseError

    db = tmp_path / "db"
    assert _index(str(photos / "01.jpg"), str(photos / "02.jpg"), "--db", str(db), "--model", tiny_model)[0] == 0

    def full_disk(*args, **kwargs):
        raise DatabaseError("cannot write database .db.refit: No space left on device")

    monkeypatch.setattr(refit, "prepare", full_disk)
    code, data, err = _index(str(photos), "--db", str(db))
    assert code == 0, err
    assert "was not fitted again" in err and "No space left on device" in err
    assert (data["vocabulary"], data["total"], data["indexed"]) == ("stored", 12, 10)


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_refit_keeps_every_file_of_the_users_in_the_database_folder(tmp_path, photos, tiny_model):
    """A refit replaces geoloc's own files only: notes, a map saved there and photos kept (and
    indexed) there are where they were, byte for byte, and the database still finds its photos."""
    db = tmp_path / "db"
    assert _index(str(photos / "01.jpg"), str(photos / "02.jpg"), "--db", str(db), "--model", tiny_model)[0] == 0
    (db / "notes.txt").write_text("my notes\n")
    (db / "where.html").write_text("<html>a map</html>")
    (db / "pics").mkdir()
    for i in (3, 4, 5, 6, 7, 8, 9):
        shutil.move(photos / f"{i:02d}.jpg", db / "pics" / f"{i:02d}.jpg")
    (db / "pics" / "sub").mkdir()
    shutil.move(photos / "10.jpg", db / "pics" / "sub" / "10.jpg")
    mine = {name: data for name, data in _listing(db).items() if name in ("notes.txt", "where.html")
            or name.startswith("pics")}
    code, data, err = _index(str(photos), str(db / "pics"), "--db", str(db))  # 12 photos ≥ 4 × 2: refit
    assert code == 0, err
    assert data["vocabulary"] == "refitted" and data["total"] == 12
    after = _listing(db)
    for name, content in mine.items():
        assert after.get(name) == content, name
    assert not swap.building(db).exists() and not swap.retired(db).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "photos"]
    assert runner.invoke(app, ["check", "--db", str(db)]).exit_code == 0
    with Database.open(db) as database:
        assert all(r.path.is_file() for r in database.iter_photos())
    code, data, err = _index(str(photos), str(db / "pics"), "--db", str(db), "--refit")  # and again
    assert code == 0, err
    assert {n: c for n, c in _listing(db).items() if n in mine} == mine


def test_a_refit_cut_before_it_gave_the_users_files_back_finishes_it(tmp_path, photos, tiny_model):
    db = tmp_path / "db"
    assert _index(str(photos / "01.jpg"), str(photos / "02.jpg"), "--db", str(db), "--model", tiny_model)[0] == 0
    (db / "notes.txt").write_text("my notes\n")
    from geoloc.indexing.run import IndexConfig, index_photos

    swap.start_building(swap.building(db))
    index_photos(sorted(photos.iterdir()), swap.building(db), IndexConfig(model=tiny_model, device="cpu"))
    swap.mark_complete(swap.building(db))
    (db / swap.RETIRED).write_text("geoloc\n")
    os.rename(db, swap.retired(db))  # killed here: the user's notes are in .db.old
    os.rename(swap.building(db), db)
    listed = runner.invoke(app, ["photos", "--db", str(db), "--json"])  # a reader gives them back
    assert listed.exit_code == 0, listed.stderr
    assert (db / "notes.txt").read_text() == "my notes\n"
    code, data, err = _index(str(photos), "--db", str(db))
    assert code == 0, err
    assert not swap.retired(db).exists() and (db / "notes.txt").read_text() == "my notes\n"


@pytest.mark.parametrize("which", ["retired", "building"])
def test_a_folder_of_the_users_named_like_a_refits_is_left_alone(tmp_path, photos, tiny_model, which):
    """``.db.old`` or ``.db.refit`` made by the user is neither removed, emptied nor moved into
    place; a due refit waits and says what is in the way; --refit is an error naming it."""
    db = tmp_path / "db"
    assert _index(str(photos / "01.jpg"), str(photos / "02.jpg"), "--db", str(db), "--model", tiny_model)[0] == 0
    theirs = swap.retired(db) if which == "retired" else swap.building(db)
    theirs.mkdir()
    (theirs / "keep.txt").write_text("mine\n")
    (theirs / "manifest.json").write_text("{}")  # even a name of geoloc's inside it
    before = _listing(theirs)
    code, data, err = _index(str(photos), "--db", str(db))
    assert code == 0, err
    assert data["vocabulary"] == "stored" and data["total"] == 12
    assert "is in the way" in err and theirs.name in err
    assert _listing(theirs) == before
    code, _, err = _index(str(photos), "--db", str(db), "--refit")
    assert code == 1 and "is in the way" in err and "Traceback" not in err
    assert _listing(theirs) == before
    listed = runner.invoke(app, ["photos", "--db", str(db), "--json"])
    assert listed.exit_code == 0 and len(json.loads(listed.stdout)) == 12
    assert _listing(theirs) == before
    shutil.rmtree(theirs)
    code, data, err = _index(str(photos), "--db", str(db), "--refit")
    assert code == 0, err and data["vocabulary"] == "refitted"


def test_a_users_folder_named_like_an_old_database_is_not_moved_into_place(tmp_path, photos, tiny_model):
    db = tmp_path / "db"
    theirs = swap.retired(db)
    theirs.mkdir()
    (theirs / "keep.txt").write_text("mine\n")
    code, data, err = _index(str(photos / "01.jpg"), "--db", str(db), "--model", tiny_model)
    assert code == 0, err
    assert (theirs / "keep.txt").read_text() == "mine\n" and (db / "manifest.json").is_file()


def test_a_refit_that_fills_the_disk_removes_its_partial_copy(tmp_path, photos, tiny_model, monkeypatch):
    """A refit stopped by a full disk leaves no partial copy taking the room every later run needs."""
    from geoloc.indexing import refit

    db = tmp_path / "db"
    assert _index(str(photos / "01.jpg"), str(photos / "02.jpg"), "--db", str(db), "--model", tiny_model)[0] == 0
    real_add = Database.add_batch

    def full_disk(self, *args, **kwargs):
        if self.path == swap.building(db).absolute():
            raise OSError(28, "No space left on device")
        return real_add(self, *args, **kwargs)

    monkeypatch.setattr(Database, "add_batch", full_disk)
    code, data, err = _index(str(photos), "--db", str(db), "--batch-size", "2")
    assert code == 0, err
    assert "No space left on device" in err and "partial copy" in err and "removed" in err
    assert not swap.building(db).exists()
    assert (data["vocabulary"], data["total"]) == ("stored", 12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "photos"]


def test_a_refit_waits_without_room_for_a_second_copy(tmp_path, photos, tiny_model, monkeypatch):
    from collections import namedtuple

    from geoloc.indexing import refit

    db = tmp_path / "db"
    assert _index(str(photos / "01.jpg"), str(photos / "02.jpg"), "--db", str(db), "--model", tiny_model)[0] == 0
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(refit.shutil, "disk_usage", lambda path: usage(10 ** 9, 10 ** 9, 1000))
    code, data, err = _index(str(photos), "--db", str(db))
    assert code == 0, err
    assert "MB free for a second copy" in err and data["vocabulary"] == "stored"
    assert not swap.building(db).exists()


def test_a_full_disk_names_an_unfinished_refit_left_by_a_kill(tmp_path, photos, tiny_model, monkeypatch):

    db = tmp_path / "db"
    assert _index(str(photos / "01.jpg"), str(photos / "02.jpg"), "--db", str(db), "--model", tiny_model)[0] == 0
    from geoloc.indexing.run import IndexConfig, index_photos

    swap.start_building(swap.building(db))  # a refit killed half-way
    index_photos(sorted(photos.iterdir())[:5], swap.building(db), IndexConfig(model=tiny_model, device="cpu"))

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Database, "add_batch", full_disk)
    code, _, err = _index(str(photos / "03.jpg"), "--db", str(db), "--vocabulary-photos", "2")
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "No space left on device" in lines[0]
    assert ".db.refit" in lines[0] and "delete that folder" in lines[0] and "Traceback" not in err


def test_a_refit_keeps_a_users_search_folder_and_an_index_keeps_other_programs_temporary_files(tmp_path, photos,
                                                                                               tiny_model):
    db = tmp_path / "db"
    assert _index(str(photos / "01.jpg"), str(photos / "02.jpg"), "--db", str(db), "--model", tiny_model)[0] == 0
    (db / "search").mkdir()
    (db / "search" / "mysearch.txt").write_text("mine\n")
    (db / ".draft.tmp").write_text("another program's atomic write\n")
    code, data, err = _index(str(photos), "--db", str(db))
    assert code == 0, err
    assert data["vocabulary"] == "refitted"
    assert (db / "search" / "mysearch.txt").read_text() == "mine\n"
    assert (db / ".draft.tmp").is_file()


def test_an_empty_folder_left_by_a_cleanup_killed_at_its_end_is_not_in_the_way(tmp_path, photos, tiny_model):
    db = tmp_path / "db"
    assert _index(str(photos / "01.jpg"), str(photos / "02.jpg"), "--db", str(db), "--model", tiny_model)[0] == 0
    swap.retired(db).mkdir()  # a kill between removing the mark and removing the folder
    code, data, err = _index(str(photos), "--db", str(db))
    assert code == 0, err
    assert data["vocabulary"] == "refitted" and not swap.retired(db).exists()


def test_a_kill_while_the_old_files_are_removed_is_finished_next_time(tmp_path, photos, tiny_model):
    """The mark goes last: whatever is left is still known as geoloc's, and removed later."""
    db = tmp_path / "db"
    assert _index(str(photos / "01.jpg"), str(photos / "02.jpg"), "--db", str(db), "--model", tiny_model)[0] == 0
    old = swap.retired(db)
    old.mkdir()
    (old / "descriptors.f32").write_bytes(b"\0" * 64)  # geoloc's old data, half removed
    (old / swap.RETIRED).write_text("geoloc\n")
    code, data, err = _index(str(photos), "--db", str(db))
    assert code == 0, err
    assert data["vocabulary"] == "refitted" and not old.exists()
