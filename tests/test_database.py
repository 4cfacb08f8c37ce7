"""The database on its own: storage, replacement, compaction, recovery, the lock, odd paths."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from geoloc.database import (
    COMPACTING,
    DESCRIPTORS,
    SQLITE,
    Database,
    PhotoRecord,
)
from geoloc.errors import DatabaseError, DatabaseLockedError
from geoloc.files import display_path

DIM = 8
MANIFEST = {"model": "test-model", "weights_hash": "abc", "dim": DIM}


def _rec(name: str, lat: float | None = 55.7, **kw) -> PhotoRecord:
    return PhotoRecord(path=Path("/photos") / name, size=100, mtime_ns=1, sha256="00",
                       lat=lat, lon=None if lat is None else 13.2, **kw)


def _desc(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "db"


def test_create_add_reopen(db_path):
    d = _desc(3)
    with Database.create(db_path, MANIFEST) as db:
        db.add_batch([_rec("a.jpg"), _rec("b.jpg", lat=None), _rec("c.jpg")], d)
        assert len(db) == 3
    manifest = json.loads((db_path / "manifest.json").read_text())
    assert manifest["model"] == "test-model" and manifest["dim"] == DIM
    assert manifest["dtype"] == "float32" and "geoloc_version" in manifest

    with Database.open(db_path) as db:
        assert db.counts() == {"total": 3, "located": 2, "unlocated": 1}
        rec = db.get(Path("/photos/b.jpg"))
        assert rec is not None and not rec.located and rec.row == 1
        records, matrix = db.descriptor_matrix(located_only=False)
        assert [r.path.name for r in records] == ["a.jpg", "b.jpg", "c.jpg"]
        assert isinstance(matrix, np.memmap)  # contiguous rows: a view, no copy
        np.testing.assert_array_equal(matrix, d)
        records, matrix = db.descriptor_matrix()
        assert [r.path.name for r in records] == ["a.jpg", "c.jpg"]
        np.testing.assert_array_equal(matrix, d[[0, 2]])


def test_open_missing_is_a_clear_error(tmp_path):
    with pytest.raises(DatabaseError, match="no geoloc database"):
        Database.open(tmp_path / "nope")


def test_create_where_a_file_is(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DatabaseError, match="cannot create database"):
        Database.create(blocker / "db", MANIFEST)


def test_create_in_a_foreign_folder_is_refused(tmp_path):
    (tmp_path / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(DatabaseError, match="not empty and not a geoloc database"):
        Database.create(tmp_path, MANIFEST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["holiday.jpg"]


def test_create_twice_is_refused(db_path):
    Database.create(db_path, MANIFEST).close()
    with pytest.raises(DatabaseError, match="already exists"):
        Database.create(db_path, MANIFEST)


def test_replaced_photo_gets_a_new_row_and_compaction_drops_the_old(db_path):
    d = _desc(4)
    with Database.create(db_path, MANIFEST) as db:
        db.add_batch([_rec(f"{i}.jpg") for i in range(4)], d)
        new = _desc(1, seed=1)
        db.add_batch([_rec("1.jpg", lat=10.0)], new)
        assert len(db) == 4 and db.next_row == 5 and db.dead_rows == 1
        assert db.get(Path("/photos/1.jpg")).row == 4
        records, matrix = db.descriptor_matrix()
        assert [r.path.name for r in records] == ["0.jpg", "2.jpg", "3.jpg", "1.jpg"]
        np.testing.assert_array_equal(matrix, np.concatenate([d[[0, 2, 3]], new]))

        assert db.remove([Path("/photos/2.jpg"), Path("/photos/missing.jpg")]) == 1
        assert db.compact() == 2
        assert db.next_row == 3 and db.dead_rows == 0
        assert (db_path / DESCRIPTORS).stat().st_size == 3 * DIM * 4
        records, matrix = db.descriptor_matrix()
        assert [r.path.name for r in records] == ["0.jpg", "3.jpg", "1.jpg"]
        np.testing.assert_array_equal(matrix, np.concatenate([d[[0, 3]], new]))
        # Appending after a compaction continues at the new high-water mark.
        db.add_batch([_rec("9.jpg")], _desc(1, seed=9))
        assert db.get(Path("/photos/9.jpg")).row == 3


def test_uncommitted_tail_is_ignored_by_readers_and_truncated_by_writers(db_path):
    with Database.create(db_path, MANIFEST) as db:
        db.add_batch([_rec("a.jpg")], _desc(1))
    # What a crash between the descriptor fsync and the SQLite commit leaves behind.
    with open(db_path / DESCRIPTORS, "ab") as fh:
        fh.write(b"\x01" * (DIM * 4 * 2 + 3))
    with Database.open(db_path) as reader:
        records, matrix = reader.descriptor_matrix()
        assert len(records) == 1 and matrix.shape == (1, DIM)
    with Database.open(db_path, write=True) as db:
        assert (db_path / DESCRIPTORS).stat().st_size == DIM * 4
        db.add_batch([_rec("b.jpg")], _desc(1, seed=2))
        assert db.get(Path("/photos/b.jpg")).row == 1


def test_damaged_descriptor_file_is_reported(db_path):
    with Database.create(db_path, MANIFEST) as db:
        db.add_batch([_rec("a.jpg"), _rec("b.jpg")], _desc(2))
    os.truncate(db_path / DESCRIPTORS, DIM * 4)
    with pytest.raises(DatabaseError, match="damaged"):
        Database.open(db_path)
    with pytest.raises(DatabaseError, match="damaged"):
        Database.open(db_path, write=True)


def test_compaction_interrupted_after_commit_is_finished(db_path):
    d = _desc(3)
    with Database.create(db_path, MANIFEST) as db:
        db.add_batch([_rec(f"{i}.jpg") for i in range(3)], d)
        db.remove([Path("/photos/0.jpg")])
    # Simulate a crash after step 2 of compact(): new file written, rows committed, no rename.
    old = np.fromfile(db_path / DESCRIPTORS, dtype=np.float32).reshape(-1, DIM)
    old[[1, 2]].tofile(db_path / COMPACTING)
    conn = sqlite3.connect(db_path / "photos.sqlite")
    with conn:
        conn.execute("UPDATE photos SET row = row - 1")
        conn.execute("UPDATE meta SET value = 2 WHERE key = 'next_row'")
        conn.execute("INSERT INTO meta VALUES ('compacting', 1)")
    conn.close()
    with Database.open(db_path) as reader:  # readers follow the .compact file
        _, matrix = reader.descriptor_matrix()
        np.testing.assert_array_equal(matrix, d[[1, 2]])
    with Database.open(db_path, write=True):
        pass
    assert not (db_path / COMPACTING).exists()
    assert (db_path / DESCRIPTORS).stat().st_size == 2 * DIM * 4
    with Database.open(db_path) as reader:
        _, matrix = reader.descriptor_matrix()
        np.testing.assert_array_equal(matrix, d[[1, 2]])


def test_stale_compaction_file_is_discarded(db_path):
    with Database.create(db_path, MANIFEST) as db:
        db.add_batch([_rec("a.jpg")], _desc(1))
    (db_path / COMPACTING).write_bytes(b"junk")  # crash before the commit of a compaction
    with Database.open(db_path, write=True) as db:
        assert not (db_path / COMPACTING).exists()
        assert db.descriptor_matrix()[1].shape == (1, DIM)


def test_one_writer_at_a_time_readers_always(db_path):
    writer = Database.create(db_path, MANIFEST)
    try:
        with pytest.raises(DatabaseLockedError, match=rf"another geoloc process \(pid {os.getpid()}\)"):
            Database.open(db_path, write=True)
        writer.add_batch([_rec("a.jpg")], _desc(1))
        with Database.open(db_path) as reader:
            assert len(reader) == 1
    finally:
        writer.close()
    Database.open(db_path, write=True).close()  # released on close


def test_reader_cannot_write(db_path):
    Database.create(db_path, MANIFEST).close()
    with Database.open(db_path) as db:
        with pytest.raises(DatabaseError, match="read-only"):
            db.add_batch([_rec("a.jpg")], _desc(1))


def test_odd_paths_round_trip(db_path, tmp_path):
    names = ["with space.jpg", "quote's \"double\".jpg", "åäö 東京 🙂.jpg", "semi;colon%20.jpg"]
    paths = [tmp_path / n for n in names]
    if os.name == "posix":
        paths.append(Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/latin1-\xe9.jpg")))
    records = [PhotoRecord(path=p, size=1, mtime_ns=2, lat=1.0, lon=2.0) for p in paths]
    with Database.create(db_path, MANIFEST) as db:
        db.add_batch(records, _desc(len(records)))
    with Database.open(db_path) as db:
        assert [r.path for r in db.photos()] == paths
        for p in paths:
            assert db.get(p) is not None
            json.dumps(db.get(p).to_json())  # JSON-safe even for non-UTF-8 names
    assert display_path(paths[-1]).endswith(".jpg")


def test_batch_shape_is_checked(db_path):
    with Database.create(db_path, MANIFEST) as db:
        with pytest.raises(ValueError):
            db.add_batch([_rec("a.jpg")], _desc(2))
        with pytest.raises(ValueError):
            db.add_batch([_rec("a.jpg"), _rec("a.jpg")], _desc(2))
        assert len(db) == 0 and db.next_row == 0


def test_vocabulary_and_manifest_updates(db_path):
    import torch

    state = {"centroids": torch.arange(12, dtype=torch.float32).reshape(3, 4)}
    with Database.create(db_path, MANIFEST) as db:
        assert db.load_vocabulary() is None
        digest = db.save_vocabulary(state)
        db.update_manifest({"vocabulary_sha256": digest})
    with Database.open(db_path) as db:
        assert db.manifest["vocabulary_sha256"] == digest
        assert torch.equal(db.load_vocabulary()["centroids"], state["centroids"])


def test_update_file_stats(db_path):
    with Database.create(db_path, MANIFEST) as db:
        db.add_batch([_rec("a.jpg")], _desc(1))
        assert db.update_file_stats([(Path("/photos/a.jpg"), 5, 6)]) == 1
        rec = db.get(Path("/photos/a.jpg"))
        assert (rec.size, rec.mtime_ns, rec.row) == (5, 6, 0)


def test_descriptors_for_records_read_before_a_compaction_are_still_theirs(db_path):
    """A reader holds records from before a writer's compaction renumbered the rows: it still
    gets each photo's own descriptor, not the one that moved into its old row."""
    d = _desc(300, seed=3)
    with Database.create(db_path, MANIFEST) as db:
        db.add_batch([_rec(f"{i}.jpg") for i in range(300)], d)
    reader = Database.open(db_path)
    stale = [reader.get(Path(f"/photos/{i}.jpg")) for i in (100, 299)]
    with Database.open(db_path, write=True) as db:
        db.remove([Path(f"/photos/{i}.jpg") for i in range(100)])
        assert db.compact() == 100
    assert [r.row for r in stale] == [100, 299]  # what the reader still believes
    np.testing.assert_array_equal(reader.descriptors_for(stale), d[[100, 299]])
    reader.close()


def test_a_database_from_a_newer_geoloc_is_refused_not_altered(db_path):
    with Database.create(db_path, MANIFEST) as db:
        db.add_batch([_rec("a.jpg")], _desc(1))
    conn = sqlite3.connect(db_path / SQLITE)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    before = (db_path / SQLITE).read_bytes()
    for write in (False, True):
        with pytest.raises(DatabaseError, match="newer geoloc"):
            Database.open(db_path, write=write)
    assert (db_path / SQLITE).read_bytes() == before
