"""`geoloc eval` as users run it: on the real lund walk, in every benchmark format, with the cache.

The photos are read in place from ../shared/data (benchmark layouts are built from symlinks or
absolute paths, never copies). Images go through the network at 160–224 px and the offline
EfficientNet-Lite0 models, so each evaluation takes seconds on two cores.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clirun import DenseRunner
from geoloc.cli import app
from geoloc.geo import to_local_m

SIDE = "160"
LAT0, LON0 = 55.6989, 13.1949  # the middle of the lund walk


def run(*args: str):
    return DenseRunner().invoke(app, [str(a) for a in args])  # eval's mechanics; test_learned: its verifiers


@pytest.fixture(scope="module")
def lund(data_dir) -> list[tuple[Path, float, float]]:
    """(path, lat, lon) of the 29 lund photos, from the EXIF table shipped beside them."""
    rows = list(csv.DictReader((data_dir / "lund" / "gps_from_exif.csv").open()))
    return [(data_dir / "lund" / "images" / r["filename"], float(r["lat"]), float(r["lon"])) for r in rows]


def _odd_even(lund, every: int = 1):
    db = [x for i, x in enumerate(lund) if i % 2 == 0][::every]  # 01, 03, ... (odd frames)
    q = [x for i, x in enumerate(lund) if i % 2 == 1][::every]  # 02, 04, ... (even frames)
    return db, q


def _fake_utm(lat, lon):
    """Planar east/north in metres (a local tangent plane shifted into UTM-like numbers)."""
    e, n = to_local_m(np.array([lat]), np.array([lon]), LAT0, LON0)[0]
    return 373000.0 + e, 6173000.0 + n


def _check_figures(data, queries):
    assert data["queries"] == queries
    r = data["recall"]
    assert set(r) == {"1", "5", "10", "20"}
    assert 0 <= r["1"] <= r["5"] <= r["10"] <= r["20"] <= 1
    assert data["median_error_m"] is not None and data["median_error_m"] >= 0


# ---------------------------------------------------------------------------------------------
# the SPEC form: photos with EXIF GPS against an existing database


def test_eval_against_an_existing_database(tmp_path, lund, exif_dir):
    db_photos, q_photos = _odd_even(lund, every=2)  # 8 database photos, 7 queries
    db = tmp_path / "db"
    res = run("index", *[p for p, _, _ in db_photos], "--db", db, "--model", "lite0-avg", "--max-side", SIDE, "--quiet")
    assert res.exit_code == 0, res.output
    no_gps = exif_dir / "jpg" / "Canon_40D.jpg"  # a GPS block without a position: no ground truth
    res = run("eval", *[p for p, _, _ in q_photos], no_gps, "--db", db, "--json", "--threshold-m", "25")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["model"] == "lite0-avg" and data["threshold_m"] == 25.0
    _check_figures(data, 7)
    assert data["queries_without_gps"] == 1
    # ...and says which photo that was, not only how many
    assert "Canon_40D.jpg: no GPS position in its EXIF" in res.stderr
    assert [e["path"] for e in data["errors"]] == [str(no_gps)]
    assert data["dataset"]["database_images"] == 8
    # along a 200 m street, the offline baseline finds the right stretch for most queries
    assert data["recall"]["5"] >= 0.5
    # calibration counts each query at the confidence `geoloc locate` gives it, over the same database
    res = run("locate", *[p for p, _, _ in q_photos], "--db", db, "--json")
    said = [q["estimate"]["confidence"] for q in json.loads(res.stdout)]
    got = {level: c["queries"] for level, c in data["calibration"].items()}
    assert got == {level: said.count(level) for level in ("high", "medium", "low")} and sum(got.values()) == 7

    # the database keeps its model: another --model is a usage error, not a silent mix
    res = run("eval", q_photos[0][0], "--db", db, "--model", "lite0-max")
    assert res.exit_code == 2 and "built with model lite0-avg" in res.stderr
    # no query with GPS at all: one clear line
    res = run("eval", no_gps, "--db", db)
    assert res.exit_code == 1 and "GPS" in res.stderr and "Traceback" not in res.output


def test_a_users_tiny_benchmark_the_arezzo_walk(tmp_path, exif_dir):
    """Nine GPS-tagged photos of a walk through Arezzo (exif-samples/jpg/gps), indexed and then
    evaluated against themselves, as a user checks geoloc on their own photos: each query is kept
    out of its own candidates, and the figures that do not depend on the network are exact."""
    walk = exif_dir / "jpg" / "gps"
    db = tmp_path / "arezzo"
    res = run("index", walk, "--db", db, "--model", "lite0-avg", "--max-side", SIDE, "--quiet")
    assert res.exit_code == 0, res.output
    out_csv, png = tmp_path / "arezzo.csv", tmp_path / "arezzo.png"
    res = run("eval", f"{walk}/DSCN00*.jpg", "--db", db, "--json", "--csv", out_csv, "--plot", png)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    _check_figures(data, 9)
    assert data["dataset"]["database_images"] == 9 and data["queries_failed"] == 0
    # Only DSCN0025 and DSCN0027 (13 m apart) have another photo of the walk within 25 m, so
    # seven queries can never be right and, with all 8 other photos ranked, recall@20 is 2/9.
    assert data["queries_without_positive"] == 7
    assert data["recall"]["20"] == round(2 / 9, 4)
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 9 and all(r["top1_path"] != r["query"] for r in rows)
    assert {Path(r["query"]).name for r in rows if r["first_correct_rank"]} <= {"DSCN0025.jpg", "DSCN0027.jpg"}
    with Image.open(png) as im:
        assert im.format == "PNG"


# ---------------------------------------------------------------------------------------------
# benchmark formats, each written small by the test


def _utm_folder(root: Path, db, q) -> Path:
    for side, items in (("database", db), ("queries", q)):
        folder = root / "images" / "test" / side
        folder.mkdir(parents=True)
        for path, lat, lon in items:
            e, n = _fake_utm(lat, lon)
            (folder / f"@{e:.2f}@{n:.2f}@33@U@{lat:.5f}@{lon:.5f}@{path.stem}@@@@@@@@.jpg").symlink_to(path)
    return root


@pytest.mark.slow
def test_utm_folder_dataset_with_csv_plot_and_cache(tmp_path, lund):
    db, q = _odd_even(lund, every=2)
    root = _utm_folder(tmp_path / "lund_bench", db, q)
    (root / "images" / "test" / "database" / "@1@2@33@U@@@broken@@.jpg").write_bytes(b"not a jpeg")
    (root / "images" / "test" / "queries" / "@1@2@33@U@@@brokenq@@.jpg").write_bytes(b"")
    out_csv, out_png = tmp_path / "per_query.csv", tmp_path / "recall.png"
    args = ["eval", "--dataset", root, "--model", "lite0-avg", "--max-side", SIDE, "--json"]
    res = run(*args, "--csv", out_csv, "--plot", out_png, "--top-k", "3")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    _check_figures(data, 7)
    assert data["dataset"] == {"name": "lund_bench", "kind": "utm-names", "database_images": 8}
    assert data["descriptors"] == {"database_computed": 8, "database_cached": 0, "queries_computed": 7, "queries_cached": 0}
    # the broken file is reported by name and the run went on
    assert any("broken@" in e["path"] for e in data["errors"])
    assert data["queries_failed"] == 1 and any("brokenq" in e["path"] for e in data["errors"])
    assert "broken" in res.stderr
    # the CSV agrees with the JSON, and has top-3 columns
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 8 and "top3_path" in rows[0] and "top4_path" not in rows[0]
    failed = [r for r in rows if r["error"]]
    assert len(failed) == 1 and "brokenq" in failed[0]["query"]
    rows_ok = [r for r in rows if not r["error"]]
    hits = sum(1 for r in rows_ok if r["first_correct_rank"] == "1")
    assert data["recall"]["1"] == pytest.approx(hits / 7, abs=1e-4)
    with Image.open(out_png) as im:
        assert im.format == "PNG"

    # re-evaluating another setting recomputes nothing: every descriptor comes from the cache
    res = run(*args, "--threshold-m", "10")
    assert res.exit_code == 0, res.output
    again = json.loads(res.stdout)
    # (the unreadable query is tried again: failures are never cached)
    assert again["descriptors"] == {"database_computed": 0, "database_cached": 8, "queries_computed": 0, "queries_cached": 7}
    assert again["threshold_m"] == 10.0
    assert again["recall"]["20"] <= data["recall"]["20"]
    assert again["median_error_m"] == data["median_error_m"]  # same descriptors, same estimates


def _write_dbstruct(path: Path, db_names, db_utm, q_names, q_utm):
    from scipy.io import savemat

    def cells(names):
        c = np.empty((len(names), 1), dtype=object)
        c[:, 0] = names
        return c

    savemat(str(path), {"dbStruct": {
        "whichSet": "test", "dbImageFns": cells(db_names), "utmDb": np.asarray(db_utm, float).T,
        "qImageFns": cells(q_names), "utmQ": np.asarray(q_utm, float).T, "numImages": len(db_names),
        "numQueries": len(q_names), "posDistThr": 25.0, "posDistSqThr": 625.0, "nonTrivPosDistSqThr": 100.0,
    }})


def test_dbstruct_dataset(tmp_path, lund):
    db, q = _odd_even(lund, every=2)
    root = tmp_path / "Pittsburgh"
    (root / "000").mkdir(parents=True)
    (root / "queries_real" / "000").mkdir(parents=True)
    db_names, q_names = [], []
    for path, _, _ in db:
        (root / "000" / f"db_{path.name}").symlink_to(path)
        db_names.append(f"000/db_{path.name}")
    for path, _, _ in q:
        (root / "queries_real" / "000" / f"q_{path.name}").symlink_to(path)
        q_names.append(f"000/q_{path.name}")
    mat = tmp_path / "mini_test.mat"  # no city in the name: UTM only, no lat/lon
    _write_dbstruct(mat, db_names, [_fake_utm(la, lo) for _, la, lo in db], q_names, [_fake_utm(la, lo) for _, la, lo in q])
    out_csv = tmp_path / "q.csv"
    res = run("eval", "--dataset", mat, "--images-root", root, "--model", "lite0-avg", "--max-side", SIDE,
              "--json", "--csv", out_csv)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    _check_figures(data, 7)
    assert data["threshold_m"] == 25.0 and data["dataset"]["kind"] == "dbstruct"
    rows = list(csv.DictReader(out_csv.open()))
    # UTM without a zone: errors in metres, but no made-up coordinates
    assert rows[0]["true_lat"] == "" and rows[0]["estimate_lat"] == "" and rows[0]["error_m"] != ""
    assert data["queries_without_positive"] == 0


def test_csv_dataset_by_absolute_paths(tmp_path, lund):
    db, q = _odd_even(lund, every=3)
    (tmp_path / "db.csv").write_text("path,lat,lon\n" + "".join(f"{p},{la},{lo}\n" for p, la, lo in db))
    (tmp_path / "queries.csv").write_text("path,lat,lon\n" + "".join(f"{p},{la},{lo}\n" for p, la, lo in q))
    res = run("eval", "--dataset", tmp_path / "queries.csv", "--db-images", tmp_path / "db.csv",
              "--model", "lite0-max", "--max-side", SIDE, "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    _check_figures(data, len(q))
    assert data["dataset"]["kind"] == "csv" and data["model"] == "lite0-max"


# ---------------------------------------------------------------------------------------------
# the reproduction study on lund


@pytest.mark.slow
def test_study_on_lund(tmp_path, lund_dir):
    """Odd frames are the database, even frames the queries; every offline pooling gets a row."""
    png = tmp_path / "study.png"
    # dense verification: the study compares poolings, whatever verifies them (test_learned tests the default)
    res = run("eval", f"{lund_dir}/*[02468].jpg", "--db-images", f"{lund_dir}/*[13579].jpg",
              "--compare", "study", "--max-side", "224", "--json", "--plot", png, "--verifier", "dense")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    rows = {r["model"]: r for r in data["models"]}
    lite = [f"lite0-{p}{r}" for p in ("vlad", "max", "avg", "gem") for r in ("", " +rerank")]
    assert list(rows) == ["netvlad-vgg16-pitts30k", "netvlad-vgg16-pitts30k-512", "netvlad-vgg16-pitts30k-128", *lite]
    for name in ("netvlad-vgg16-pitts30k", "netvlad-vgg16-pitts30k-512", "netvlad-vgg16-pitts30k-128"):
        assert rows[name]["status"] == "skipped"
        assert rows[name]["reason"] == f"weights not available offline (geoloc models download {name})"
    for name in lite:
        assert rows[name]["status"] == "ok"
        _check_figures(rows[name], 14)
        assert rows[name]["dataset"]["database_images"] == 15
        assert rows[name]["rerank"] == name.endswith("+rerank")
    assert rows["lite0-vlad"]["dim"] == 64 * 320 and rows["lite0-max"]["dim"] == 320
    # every query of this walk has a database frame within 25 m; NetVLAD finds one in its top 5
    assert rows["lite0-vlad"]["queries_without_positive"] == 0
    assert rows["lite0-vlad"]["recall"]["5"] >= 0.9
    with Image.open(png) as im:
        assert im.format == "PNG"

    # the people's table: one row per model, skipped rows say why
    res = run("eval", f"{lund_dir}/*[02468].jpg", "--db-images", f"{lund_dir}/*[13579].jpg",
              "--compare", "lite0-vlad,netvlad-vgg16-pitts30k", "--max-side", "224", "--verifier", "dense")
    assert res.exit_code == 0, res.output
    assert "lite0-vlad" in res.stdout and "R@1" in res.stdout
    assert "netvlad-vgg16-pitts30k skipped: weights not available offline" in res.stdout


# ---------------------------------------------------------------------------------------------
# usage errors: one line, the right exit code, before any work


@pytest.mark.parametrize(
    "args, code, words",
    [
        ([], 2, "QUERIES"),
        (["x.jpg", "--dataset", "d"], 2, "not both"),
        (["--dataset", "d", "--compare", "lite0-max", "--model", "lite0-avg"], 2, "--compare"),
        (["x.jpg", "--compare", "lite0-max"], 2, "--db-images"),
        (["--dataset", "d", "--compare", "resnet-9000"], 2, "unknown model"),
        (["--dataset", "d", "--plot", "curve.jpg"], 2, ".png"),
        (["--dataset", "d", "--db", "somewhere"], 2, "--db"),
        (["--dataset", "does-not-exist"], 1, "no such file"),
        (["--dataset", "d", "--threshold-m", "-5"], 2, "--threshold-m"),
    ],
)
def test_usage_errors(tmp_path, monkeypatch, args, code, words):
    monkeypatch.chdir(tmp_path)
    res = run("eval", *args)
    assert res.exit_code == code, res.output
    assert words in res.stderr
    assert "Traceback" not in res.output and len(res.stderr.strip().splitlines()) == 1


def test_missing_database_is_one_line(tmp_path, lund):
    res = run("eval", lund[1][0], "--db", tmp_path / "nope")
    assert res.exit_code == 1
    assert "no geoloc database" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_a_small_eval_database_gets_no_index_advice(lund_dir):
    """Why: eval built its own cache database and told the user to `geoloc index --refit` it.
    Its vocabulary note speaks of the figures instead, on every run that uses it."""
    args = ["eval", f"{lund_dir}/0[2468].jpg", "--db-images", f"{lund_dir}/*[13579].jpg",
            "--model", "lite0-vlad", "--max-side", SIDE, "--json"]
    for _ in range(2):  # built, then from the cache
        res = run(*args)
        assert res.exit_code == 0, res.output
        assert "this evaluation's database was fitted on only 15 photos" in res.stderr
        assert "--refit" not in res.stderr and "geoloc index" not in res.stderr
