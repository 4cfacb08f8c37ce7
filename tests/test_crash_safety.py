"""kill -9 a real `geoloc index` at awkward moments; the database must open and the re-run must
finish with every photo exactly once and the same descriptors as an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from geoloc.cli import app
from geoloc.database import Database
from dbprobe import committed

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

ARGS = ["--model", "lite0-vlad", "--max-side", "224", "--batch-size", "2", "--workers", "1",
        "--vocabulary-photos", "6"]


def _copy(lund_dir: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for src in sorted(lund_dir.glob("*.jpg")):
        shutil.copy2(src, dest / src.name)
    return dest


def _index_cli(photos: Path, db: Path):
    result = CliRunner().invoke(app, ["index", str(photos), "--db", str(db), "--json", *ARGS])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result


def _by_name(db: Path) -> dict[str, np.ndarray]:
    with Database.open(db) as database:
        records, matrix = database.descriptor_matrix(located_only=False)
        return {r.path.name: np.array(row) for r, row in zip(records, matrix)}


@pytest.fixture(scope="module")
def clean(one_thread, lund_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    photos = _copy(lund_dir, root / "photos")
    _index_cli(photos, root / "db")
    return _by_name(root / "db")


def _start(photos: Path, db: Path) -> subprocess.Popen:
    import torch

    # The same thread count as the in-process runs (one: see the one_thread fixture): float sums
    # in another order would move the fitted vocabulary (and so the descriptors) by more than
    # the 1e-5 compared below.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.Popen(
        [sys.executable, "-m", "geoloc", "index", str(photos), "--db", str(db), "--quiet", *ARGS],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )


def _kill_when(proc: subprocess.Popen, condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            pytest.fail(f"indexing ended (rc {proc.returncode}) before the moment to kill it: "
                        f"{proc.stderr.read().decode(errors='replace')[-500:]}")
        time.sleep(0.002)
    proc.kill()
    pytest.fail("the moment to kill never came")


def _check_recovered(photos: Path, db: Path, clean: dict[str, np.ndarray]) -> None:
    with Database.open(db) as database:  # a killed database opens (read-only) as it is
        database.descriptor_matrix(located_only=False)
    _index_cli(photos, db)
    with Database.open(db) as database:
        records = database.photos()
        assert len(records) == 29
        assert len({r.path for r in records}) == 29 and len({r.row for r in records}) == 29
        assert (db / "descriptors.f32").stat().st_size == database.next_row * database.dim * 4
    got = _by_name(db)
    assert set(got) == set(clean)
    for name, row in clean.items():
        np.testing.assert_allclose(got[name], row, atol=1e-5, err_msg=name)


def test_kill_while_fitting_the_vocabulary(lund_dir, tmp_path, clean):
    photos = _copy(lund_dir, tmp_path / "photos")
    db = tmp_path / "db"
    proc = _start(photos, db)
    _kill_when(proc, lambda: (db / "manifest.json").exists())
    assert not (db / "vocabulary.safetensors").exists() and committed(db) <= 0
    _check_recovered(photos, db, clean)


def test_killed_twice_then_finished(lund_dir, tmp_path, clean):
    """Killed right after the vocabulary is stored, then mid-way through the batches."""
    photos = _copy(lund_dir, tmp_path / "photos")
    db = tmp_path / "db"
    proc = _start(photos, db)
    _kill_when(proc, lambda: (db / "vocabulary.safetensors").exists())
    first = max(committed(db), 0)
    proc = _start(photos, db)  # the re-run reuses the stored vocabulary
    # At least one batch of the main pass committed (past the 6-photo sample), not all.
    _kill_when(proc, lambda: max(first, 6) + 2 <= committed(db) < 27)
    assert 0 < committed(db) < 29
    _check_recovered(photos, db, clean)


def test_a_first_run_killed_after_its_first_commits_keeps_them(lund_dir, tmp_path, clean):
    """A first run commits from its first batch after the vocabulary: a kill -9 then loses at
    most the batch in flight, and the re-run indexes only what is missing."""
    photos = _copy(lund_dir, tmp_path / "photos")
    db = tmp_path / "db"
    proc = _start(photos, db)
    _kill_when(proc, lambda: 4 <= committed(db) < 27)
    kept = committed(db)
    assert kept >= 4
    report = json.loads(_index_cli(photos, db).stdout)
    assert report["indexed"] + report["unchanged"] == 29 and report["indexed"] <= 29 - kept
    _check_recovered(photos, db, clean)


def test_a_killed_vocabulary_fit_resumes_where_it_stopped(lund_dir, tmp_path, clean):
    """Each sample photo's share of features is cached as it is computed: the re-run does not
    compute those again, and fits the same vocabulary as an uninterrupted run."""
    photos = _copy(lund_dir, tmp_path / "photos")
    db = tmp_path / "db"
    cache = db / ".vocabulary-fit"
    proc = _start(photos, db)
    _kill_when(proc, lambda: len(list(cache.glob("0*.npy"))) >= 2)
    assert not (db / "vocabulary.safetensors").exists()
    assert len(list(cache.glob("0*.npy"))) >= 2
    _check_recovered(photos, db, clean)
    assert not cache.exists()


def test_ctrl_c_says_how_many_photos_were_saved(lund_dir, tmp_path):
    photos = _copy(lund_dir, tmp_path / "photos")
    db = tmp_path / "db"
    proc = _start(photos, db)
    # Interrupted as soon as a first batch is saved: the run of 29 small photos lasts about a
    # second after that, and a reader can wait out a checkpoint's lock for part of it.
    deadline = time.monotonic() + 120
    while committed(db) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    if proc.poll() is not None:
        pytest.fail(f"indexing ended (rc {proc.returncode}) before it could be interrupted")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    stderr = stderr.decode()
    assert proc.returncode == 130, stderr
    assert "photos saved in this run" in stderr and "run the same command again" in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1


def test_killed_then_its_wal_lost_loses_no_descriptor(lund_dir, tmp_path, clean):
    """kill -9 mid-way, then photos.sqlite-wal (and -shm) deleted, as a careless copy does. The
    WAL is checkpointed after every batch, so it held at most the last one; its photos find
    their rows again by content, and the finished database equals an uninterrupted run's."""
    photos = _copy(lund_dir, tmp_path / "photos")
    db = tmp_path / "db"
    proc = _start(photos, db)
    _kill_when(proc, lambda: 10 <= committed(db) < 25)
    for suffix in ("-wal", "-shm"):
        Path(f"{db / 'photos.sqlite'}{suffix}").unlink(missing_ok=True)
    _check_recovered(photos, db, clean)
    result = CliRunner().invoke(app, ["check", "--db", str(db)])
    assert result.exit_code == 0, result.output
