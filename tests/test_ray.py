"""`geoloc index --engine ray` on a local Ray cluster: the same database as a local run, a killed
driver that resumes, and one-line errors without the extra or without a cluster.

One local Ray (2 CPUs, as CI has) serves the whole module; a test that needs Ray is skipped with
the reason when the extra is not installed (CI installs it: `.ci/run`).
"""

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

ROOT = Path(__file__).resolve().parents[1]
LITE = ["--model", "lite0-vlad", "--max-side", "224", "--batch-size", "2", "--workers", "1",
        "--vocabulary-photos", "6"]


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray for the module; its workers import this checkout's geoloc."""
    try:
        import ray
        import ray.data
    except ImportError:
        pytest.skip('the extra geoloc[ray] is not installed (python -m pip install -e ".[test,ray]")')
    previous = os.environ.get("PYTHONPATH")
    # Inherited by the raylet, hence by every worker of every job, a second driver's included.
    os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + previous if previous else "")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if previous is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous


def _index(args: list[str]) -> dict:
    result = CliRunner().invoke(app, ["index", *args, "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return json.loads(result.stdout)


def _by_path(db: Path) -> dict[str, np.ndarray]:
    with Database.open(db) as database:
        records, matrix = database.descriptor_matrix(located_only=False)
        return {os.fspath(r.path): np.array(row) for r, row in zip(records, matrix)}


def _assert_same_descriptors(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for path, row in want.items():
        np.testing.assert_allclose(got[path], row, atol=1e-5, err_msg=path)


def _counts(report: dict) -> tuple:
    return tuple(report[k] for k in ("total", "located", "unlocated", "indexed", "errors"))


def test_ray_gives_the_database_a_local_run_gives(one_thread, ray_cluster, tiny_model, lund_dir, tmp_path):
    """Odd lund frames (and a broken file) indexed locally and on Ray: same counts, same
    descriptors to 1e-5, same `locate` answers for the even frames."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(1, 30, 2):
        shutil.copy2(lund_dir / f"{i:02d}.jpg", photos / f"{i:02d}.jpg")
    (photos / "broken.jpg").write_bytes(b"not a jpeg at all")
    args = [str(photos), "--model", tiny_model, "--vocabulary-photos", "4", "--batch-size", "3"]
    local = _index([*args, "--db", str(tmp_path / "local")])
    on_ray = _index([*args, "--db", str(tmp_path / "ray"), "--engine", "ray"])
    assert _counts(on_ray) == _counts(local) == (15, 15, 0, 15, 1)
    assert [e["path"] for e in on_ray["error_files"]] == [e["path"] for e in local["error_files"]]
    _assert_same_descriptors(_by_path(tmp_path / "ray"), _by_path(tmp_path / "local"))

    queries = [str(lund_dir / f"{i:02d}.jpg") for i in range(2, 29, 2)]
    answers = []
    for db in ("local", "ray"):
        result = CliRunner().invoke(app, ["locate", *queries, "--db", str(tmp_path / db), "--json", "--top-k", "3"])
        assert result.exit_code == 0, result.output
        answers.append([(q["estimate"]["lat"], q["estimate"]["lon"], [c["path"] for c in q["candidates"]])
                        for q in json.loads(result.stdout)])
    assert answers[0] == answers[1]

    again = _index([*args, "--db", str(tmp_path / "ray"), "--engine", "ray"])  # nothing new: no Ray work
    assert (again["indexed"], again["unchanged"]) == (0, 15)


@pytest.mark.slow
def test_a_killed_ray_driver_resumes_where_it_stopped(one_thread, ray_cluster, lund_dir, tmp_path):
    """kill -9 the driver once batches from the cluster are committed; the re-run keeps them,
    does only the rest, and the database equals an uninterrupted local run."""
    import torch

    photos = tmp_path / "photos"
    photos.mkdir()
    for src in sorted(lund_dir.glob("*.jpg")):
        shutil.copy2(src, photos / src.name)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the same vocabulary fit
    db = tmp_path / "db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "geoloc", "index", str(photos), "--db", str(db), "--quiet", *LITE,
         "--engine", "ray", "--ray-address", ray_cluster],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    deadline = time.monotonic() + 180
    while committed(db) < 10:  # the 6 of the vocabulary sample, then batches from the actors
        if proc.poll() is not None:
            pytest.fail(f"indexing ended (rc {proc.returncode}) before the moment to kill it: "
                        f"{proc.stderr.read().decode(errors='replace')[-800:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the moment to kill never came")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = committed(db)
    assert 10 <= kept < 29

    resumed = _index([str(photos), "--db", str(db), *LITE, "--engine", "ray"])
    # A batch whose descriptors were appended but whose records were not yet committed when the
    # driver died is claimed back by content: "unchanged" may exceed what the probe counted.
    assert (resumed["total"], resumed["errors"]) == (29, 0)
    assert resumed["indexed"] + resumed["unchanged"] == 29 and resumed["unchanged"] >= kept
    with Database.open(db) as database:
        records = database.photos()
        assert len({r.path for r in records}) == 29 and len({r.row for r in records}) == 29
    _index([str(photos), "--db", str(tmp_path / "local"), *LITE])
    _assert_same_descriptors(_by_path(db), _by_path(tmp_path / "local"))


def test_without_the_extra_one_line_says_how_to_install_it(tiny_model, lund_dir, tmp_path, monkeypatch):
    for name in ("ray", "ray.data"):
        monkeypatch.setitem(sys.modules, name, None)  # import ray → ImportError
    result = CliRunner().invoke(app, ["index", str(lund_dir / "01.jpg"), "--db", str(tmp_path / "db"),
                                      "--model", tiny_model, "--engine", "ray"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and 'pip install "geoloc[ray]"' in lines[0]
    assert not (tmp_path / "db").exists()


def test_an_unreachable_cluster_is_one_line(tiny_model, lund_dir, tmp_path):
    pytest.importorskip("ray", reason="the extra geoloc[ray] is not installed")
    start = time.monotonic()
    result = CliRunner().invoke(app, ["index", str(lund_dir / "01.jpg"), "--db", str(tmp_path / "db"),
                                      "--model", tiny_model, "--engine", "ray", "--ray-address", "127.0.0.1:1"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot connect to the Ray cluster at 127.0.0.1:1")
    assert time.monotonic() - start < 30
    assert not (tmp_path / "db").exists()


def test_ray_options_need_the_ray_engine(tiny_model, lund_dir, tmp_path):
    result = CliRunner().invoke(app, ["index", str(lund_dir / "01.jpg"), "--db", str(tmp_path / "db"),
                                      "--ray-workers", "2"])
    assert result.exit_code == 2
    assert "--engine ray" in result.output


def test_eval_builds_its_database_side_on_ray(ray_cluster, tiny_model, lund_dir, tmp_path, monkeypatch):
    """`geoloc eval --engine ray`: the figures of a local evaluation."""
    figures = []
    for engine in ("local", "ray"):
        monkeypatch.setenv("GEOLOC_HOME", str(tmp_path / engine))  # each its own evaluation cache
        result = CliRunner().invoke(app, [
            "eval", str(lund_dir / "*[02468].jpg"), "--db-images", str(lund_dir / "*[13579].jpg"),
            "--model", tiny_model, "--no-rerank", "--json", "--engine", engine])
        assert result.exit_code == 0, result.output
        out = json.loads(result.stdout)
        assert out["descriptors"]["database_computed"] == 15
        figures.append((out["queries"], out["recall"], out["median_error_m"]))
    assert figures[0] == figures[1]


def test_compressed_index_shards_filled_on_ray_merge_into_the_same_index(ray_cluster, tmp_path):
    """Each Ray task fills a copy of the trained index from the descriptor file; faiss's
    merge_from joins them: the same answers as one index filled in this process."""
    import faiss
    import ray

    from geoloc.retrieval.compressed import CompressedConfig, CompressedSearch, add_rows, add_rows_on_ray, train

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 32)).astype(np.float32)
    file = centres[rng.integers(0, 40, 4000)] + 0.3 * rng.standard_normal((4000, 32)).astype(np.float32)
    file /= np.linalg.norm(file, axis=1, keepdims=True)
    path = tmp_path / "descriptors.f32"
    file.tofile(path)
    rows = np.arange(len(file))
    config = CompressedConfig(threshold=0)
    trained = train(file, rows, config)
    local = faiss.clone_index(trained)
    add_rows(local, file, 0, len(file))
    add_rows_on_ray(ray, trained, path, 32, 0, len(file), shards=3)
    assert trained.ntotal == len(file)
    queries = file[::97] + 0.05
    want = CompressedSearch(local, file, rows, config).search(queries, 5)
    got = CompressedSearch(trained, file, rows, config).search(queries, 5)
    np.testing.assert_array_equal(got[1], want[1])
