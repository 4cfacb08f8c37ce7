"""The evaluation library: metrics against hand-computed cases, every dataset format, the cache."""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geoloc.errors import GeolocError, UsageError
from geoloc.evaluation import datasets as ds
from geoloc.evaluation import metrics as m
from geoloc.evaluation.cache import QueryDescriptorCache
from geoloc.evaluation.report import plot_recall_curves, write_query_csv
from geoloc.geo import haversine_m, utm_to_latlon

# ---------------------------------------------------------------------------------------------
# metrics, computed by hand


def test_recall_hand_computed():
    # four queries, threshold 25 m; distances of each query's ranked candidates from its truth
    ranked = [
        [10.0, 300.0, 300.0],  # hit at rank 1
        [300.0, 300.0, 300.0, 300.0, 300.0, 20.0],  # hit at rank 6
        [300.0, 25.0],  # hit at rank 2 (25 m counts: "within")
        [300.0] * 30,  # never
    ]
    r = m.recall_at(ranked, 25.0, ns=(1, 2, 5, 10, 20))
    assert r == {1: 0.25, 2: 0.5, 5: 0.5, 10: 0.75, 20: 0.75}
    assert [m.first_hit_rank(d, 25.0) for d in ranked] == [1, 6, 2, None]
    # a tighter threshold removes the 25 m and 20 m hits
    assert m.recall_at(ranked, 15.0, ns=(1, 20)) == {1: 0.25, 20: 0.25}


def test_recall_curve_matches_recall_at():
    ranked = [[10.0], [99.0, 5.0], [99.0, 99.0, 99.0], [99.0, 99.0, 1.0]]
    curve = m.recall_curve(ranked, 25.0, max_n=4)
    assert curve.tolist() == [0.25, 0.5, 0.75, 0.75]
    assert m.recall_at(ranked, 25.0, ns=(1, 2, 3, 4)) == {1: 0.25, 2: 0.5, 3: 0.75, 4: 0.75}


def test_recall_no_queries_is_nan_not_an_error():
    r = m.recall_at([], 25.0)
    assert all(math.isnan(v) for v in r.values())


def test_error_stats_hand_computed():
    s = m.error_stats([3.0, None, 1.0, 10.0, float("nan"), 2.0])
    assert s["median_error_m"] == 2.5  # of 1, 2, 3, 10
    assert s["mean_error_m"] == 4.0
    assert s["p90_error_m"] == pytest.approx(7.9)  # numpy's linear interpolation: 3 + 0.7·7
    assert m.error_stats([None]) == {"median_error_m": None, "mean_error_m": None, "p90_error_m": None}
    assert m.within_fraction([5.0, 30.0, None, 10.0], 10.0) == 0.5


def test_summarize_counts_failed_and_positive_less_queries():
    def cand(d):
        return [m.Retrieved(i + 1, f"db{i}", None, None, 1.0 - i / 10, x) for i, x in enumerate(d)]

    outcomes = [
        m.QueryOutcome("a", 0, 0, cand([5.0, 50.0]), error_m=4.0, has_positive=True),
        m.QueryOutcome("b", 0, 0, cand([50.0, 5.0]), error_m=40.0, has_positive=True),
        m.QueryOutcome("c", 0, 0, cand([500.0, 500.0]), error_m=500.0, has_positive=False),
        m.QueryOutcome("d", 0, 0, error="unreadable"),
    ]
    s = m.summarize(outcomes, 25.0)
    assert s.queries == 3 and s.failed == 1
    assert s.recall[1] == pytest.approx(1 / 3) and s.recall[5] == pytest.approx(2 / 3)
    assert s.median_error_m == 40.0 and s.mean_error_m == pytest.approx(544 / 3)
    assert s.queries_without_positive == 1
    assert s.curve[:2].tolist() == pytest.approx([1 / 3, 2 / 3])


# ---------------------------------------------------------------------------------------------
# splits: distances and positives


def _positions(lat, lon, utm=None):
    return ds.Positions(np.asarray(lat, float), np.asarray(lon, float), None if utm is None else np.asarray(utm, float))


def test_positives_geo_hand_computed():
    # database points due north of the query at 0, 10, 24.9, 25.1 and 100 m
    lat0, lon0 = 55.7, 13.19
    metres = [0.0, 10.0, 24.9, 25.1, 100.0]
    dlat = [x / 6_371_008.8 * 180 / math.pi for x in metres]
    split = ds.Split(
        "t", "csv", "t", [Path(f"/db{i}") for i in range(5)],
        _positions([lat0 + d for d in dlat], [lon0] * 5), [Path("/q")], _positions([lat0], [lon0]),
    )
    assert split.metric == "geo"
    assert split.positives(25.0)[0].tolist() == [0, 1, 2]
    assert split.distances_m(0, [4, 1]).tolist() == pytest.approx([100.0, 10.0], abs=1e-6)


def test_positives_utm_uses_planar_distance():
    db_utm = [[500000.0, 4000000.0], [500020.0, 4000000.0], [500000.0, 4000030.0]]
    q_utm = [[500003.0, 4000004.0]]  # 5 m from #0, 17.5 m from #1, 26.2 m from #2
    split = ds.Split(
        "t", "dbstruct", "t", [Path(f"/db{i}") for i in range(3)], _positions([np.nan] * 3, [np.nan] * 3, db_utm),
        [Path("/q")], _positions([np.nan], [np.nan], q_utm),
    )
    assert split.metric == "utm"
    assert split.positives(25.0)[0].tolist() == [0, 1]
    assert split.distances_m(0, [0, 1, 2]).tolist() == pytest.approx([5.0, math.hypot(17, 4), math.hypot(3, 26)])


# ---------------------------------------------------------------------------------------------
# the formats, each written small by the test


def _tiny_jpeg(path: Path, colour=(120, 80, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), colour).save(path, "JPEG")
    return path


def _utm_name(east, north, zone=33, letter="U", lat=None, lon=None):
    la = "" if lat is None else f"{lat:.7f}"
    lo = "" if lon is None else f"{lon:.7f}"
    return f"@{east:.2f}@{north:.2f}@{zone}@{letter}@{la}@{lo}@pano@@0@@@@201806@@.jpg"


def test_parse_utm_name_fields():
    lat, lon, east, north, zone, northern = ds.parse_utm_name(
        "@0543256.96@4178906.48@10@S@037.75594@-122.50440@8lAA@@90@@@@201311@@.jpg"
    )
    assert (east, north, zone, northern) == (543256.96, 4178906.48, 10, True)
    assert (lat, lon) == (37.75594, -122.5044)
    # lat/lon empty: filled from UTM by the reader; southern band letter
    assert ds.parse_utm_name("@334000@6100000@56@H@@@@.jpg")[4:] == (56, False)
    for bad in ("photo.jpg", "@abc@def@10@S@@@.jpg", "@@@@@@@.jpg", "@1@2@99@S@@@.jpg"):
        with pytest.raises(ValueError):
            ds.parse_utm_name(bad)


def test_read_utm_folder(tmp_path):
    root = tmp_path / "pitts_mini"
    db_dir = root / "images" / "test" / "database"
    q_dir = root / "images" / "test" / "queries"
    for i in range(4):
        _tiny_jpeg(db_dir / _utm_name(500000 + 30 * i, 6000000))
    lat_q, lon_q = utm_to_latlon(500031, 6000004, 33, True)
    _tiny_jpeg(q_dir / _utm_name(500031, 6000004, lat=lat_q, lon=lon_q))
    _tiny_jpeg(q_dir / "not_in_the_convention.jpg")
    split = ds.load_dataset(root)
    assert split.kind == "utm-names" and split.name == "pitts_mini"
    assert len(split.db_paths) == 4 and len(split.query_paths) == 1
    assert [p.path.name for p in split.problems] == ["not_in_the_convention.jpg"]
    assert split.metric == "utm"
    # lat/lon filled from UTM where the name left them empty
    assert split.db.has_latlon
    assert split.positives(25.0)[0].tolist() == [1]  # 1 m east, 4 m north of db #1 (x=500030)
    d = split.distances_m(0, [0, 1])
    assert d.tolist() == pytest.approx([math.hypot(31, 4), math.hypot(1, 4)])
    # the great-circle distance of the filled-in lat/lon agrees with UTM to well under a metre
    geo = haversine_m(split.queries.lat[0], split.queries.lon[0], split.db.lat[0], split.db.lon[0])
    assert geo == pytest.approx(d[0], abs=0.1)


def _write_dbstruct(path: Path, db_names, db_utm, q_names, q_utm, thr=25.0, **extra):
    from scipy.io import savemat

    db = np.empty((len(db_names), 1), dtype=object)
    db[:, 0] = db_names
    q = np.empty((len(q_names), 1), dtype=object)
    q[:, 0] = q_names
    savemat(str(path), {"dbStruct": {
        "whichSet": "test", "dbImageFns": db, "utmDb": np.asarray(db_utm, float).T,
        "qImageFns": q, "utmQ": np.asarray(q_utm, float).T, "numImages": len(db_names),
        "numQueries": len(q_names), "posDistThr": thr, "posDistSqThr": thr**2,
        "nonTrivPosDistSqThr": 100, **extra,
    }})


def test_read_dbstruct_pittsburgh_layout(tmp_path):
    root = tmp_path / "pitts"
    for name in ("000/000000_pitch1_yaw1.jpg", "000/000001_pitch1_yaw1.jpg", "001/001000_pitch1_yaw1.jpg"):
        _tiny_jpeg(root / name)
    _tiny_jpeg(root / "queries_real" / "000" / "000000_pitch1_yaw1.jpg")
    mat = tmp_path / "pitts30k_test.mat"
    _write_dbstruct(
        mat,
        ["000/000000_pitch1_yaw1.jpg", "000/000001_pitch1_yaw1.jpg", "001/001000_pitch1_yaw1.jpg", "001/gone.jpg"],
        [[584000, 4477000], [584010, 4477000], [584500, 4477000], [584000, 4477001]],
        ["000/000000_pitch1_yaw1.jpg"],
        [[584004, 4477003]],
        thr=25.0,
    )
    split = ds.load_dataset(mat, images_root=root)
    assert split.kind == "dbstruct" and split.threshold_m == 25.0
    assert len(split.db_paths) == 3 and len(split.query_paths) == 1
    assert [p.reason for p in split.problems] == ["database image listed in pitts30k_test.mat not found"]
    assert split.metric == "utm"
    assert split.positives(25.0)[0].tolist() == [0, 1]
    # Pittsburgh is UTM zone 17T: the file name tells which, so lat/lon come out near the city
    assert split.queries.lat[0] == pytest.approx(40.44, abs=0.05)
    assert split.queries.lon[0] == pytest.approx(-80.0, abs=0.1)


def test_read_dbstruct_tokyo_png_names_and_single_query(tmp_path):
    # Tokyo 24/7 lists .png names for images shipped as .jpg; one query squeezes to a string
    root = tmp_path / "tokyo"
    _tiny_jpeg(root / "03814" / "381475_000.jpg")
    _tiny_jpeg(root / "query" / "00001.jpg")
    mat = tmp_path / "tokyo247.mat"
    _write_dbstruct(mat, ["03814/381475_000.png"], [[381475, 3950000]], ["00001.png"], [[381480, 3950000]])
    split = ds.read_dbstruct(mat, images_root=root)
    assert split.db_paths[0].name == "381475_000.jpg" and split.query_paths[0].name == "00001.jpg"
    assert split.problems == []
    assert split.queries.lon[0] == pytest.approx(139.7, abs=0.3)  # zone 54 from the name


def test_read_dbstruct_errors(tmp_path):
    with pytest.raises(GeolocError, match="no such file"):
        ds.read_dbstruct(tmp_path / "missing.mat")
    bad = tmp_path / "bad.mat"
    bad.write_bytes(b"not a mat file at all")
    with pytest.raises(GeolocError, match="bad.mat"):
        ds.read_dbstruct(bad)
    mat = tmp_path / "x.mat"
    _write_dbstruct(mat, ["a.jpg"], [[1, 2]], ["b.jpg"], [[1, 2]])
    with pytest.raises(GeolocError, match="none of its 1 database images were found"):
        ds.read_dbstruct(mat, images_root=tmp_path)
    with pytest.raises(UsageError):
        ds.read_dbstruct(mat, utm_zone="99Q")
    # Pittsburgh's query names repeat its database names: without a queries folder they would
    # silently resolve to database images
    _tiny_jpeg(tmp_path / "a.jpg")
    mat2 = tmp_path / "same.mat"
    _write_dbstruct(mat2, ["a.jpg"], [[1, 2]], ["a.jpg"], [[1, 2]])
    with pytest.raises(GeolocError, match="--queries-root"):
        ds.read_dbstruct(mat2, images_root=tmp_path)


def test_read_csv_split(tmp_path):
    photos = tmp_path / "photos"
    for name in ("a.jpg", "b.jpg", "q1.jpg", "q2.jpg"):
        _tiny_jpeg(photos / name)
    (tmp_path / "db.csv").write_text("path,lat,lon\nphotos/a.jpg,55.7,13.19\nphotos/b.jpg,55.701,13.19\n")
    # no header, semicolons, a bad row, a missing file, an impossible position
    (tmp_path / "queries.csv").write_text(
        "photos/q1.jpg;55.7001;13.19\nphotos/q2.jpg;north;13.19\nphotos/nope.jpg;55.7;13.19\nphotos/q2.jpg;95;13.19\n"
    )
    split = ds.load_dataset(tmp_path / "queries.csv", db_images=[tmp_path / "db.csv"])
    assert split.kind == "csv" and split.metric == "geo"
    assert [p.name for p in split.query_paths] == ["q1.jpg"]
    assert [p.name for p in split.db_paths] == ["a.jpg", "b.jpg"]
    assert len(split.problems) == 3
    assert split.positives(25.0)[0].tolist() == [0]
    with pytest.raises(UsageError, match="needs its database"):
        ds.load_dataset(tmp_path / "queries.csv")


def test_csv_header_with_other_columns(tmp_path):
    _tiny_jpeg(tmp_path / "x.jpg")
    (tmp_path / "t.csv").write_text("id,Latitude,Longitude,File\n7,-33.9,18.4,x.jpg\n")
    paths, pos = ds.read_location_csv(tmp_path / "t.csv")
    assert paths == [(tmp_path / "x.jpg").absolute()] and pos.lat.tolist() == [-33.9]


def test_load_dataset_rejects_unknown(tmp_path):
    with pytest.raises(GeolocError, match="no such file"):
        ds.load_dataset(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GeolocError, match="not a benchmark folder"):
        ds.load_dataset(tmp_path / "empty")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(GeolocError, match="unknown dataset format"):
        ds.load_dataset(tmp_path / "x.json")


def test_fingerprint_changes_with_truth(tmp_path):
    a = ds.Split("t", "csv", "t", [Path("/a")], _positions([1.0], [2.0]), [Path("/q")], _positions([1.0], [2.0]))
    b = ds.Split("t", "csv", "t", [Path("/a")], _positions([1.0], [2.1]), [Path("/q")], _positions([1.0], [2.0]))
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == ds.Split("u", "csv", "u", [Path("/a")], _positions([1.0], [2.0]), [Path("/q")],
                                       _positions([1.0], [2.0])).fingerprint()


# ---------------------------------------------------------------------------------------------
# per-query CSV, the curve PNG


def test_query_csv_columns():
    o = m.QueryOutcome(
        "/q/1.jpg", 55.7, 13.19,
        [m.Retrieved(1, "/db/a.jpg", 55.7, 13.19, 0.91, 40.0), m.Retrieved(2, "/db/b.jpg", 55.7, 13.19, 0.8, 3.5)],
        estimate_lat=55.70001, estimate_lon=13.19, radius_m=12.0, error_m=2.25,
    )
    bad = m.QueryOutcome("/q/2.jpg", None, None, error="cannot decode")
    buf = io.StringIO()
    write_query_csv([(None, [o, bad], 25.0)], buf, top_k=3)
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert rows[0]["first_correct_rank"] == "2"
    assert rows[0]["top1_path"] == "/db/a.jpg" and rows[0]["top2_distance_m"] == "3.50"
    assert rows[0]["top3_path"] == "" and rows[0]["error_m"] == "2.25"
    assert rows[1]["error"] == "cannot decode" and rows[1]["first_correct_rank"] == ""
    assert "model" not in rows[0]
    # a --compare run: a model column, one block of rows per model, each with its threshold
    buf = io.StringIO()
    write_query_csv([("m1", [o], 25.0), ("m2", [o], 3.0)], buf, top_k=1)
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert [(r["model"], r["first_correct_rank"]) for r in rows] == [("m1", "2"), ("m2", "")]


def test_recall_plot_is_a_png(tmp_path):
    out = tmp_path / "sub" / "curve.png"
    plot_recall_curves({"a": np.array([0.5, 0.75, 1.0]), "b": np.array([0.25, 0.5, 0.5])}, out, 25.0, "t")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 300


# ---------------------------------------------------------------------------------------------
# the query descriptor cache


def test_query_cache_reuses_and_invalidates(tmp_path):
    files = [_tiny_jpeg(tmp_path / f"{i}.jpg") for i in range(3)]
    calls: list[list[str]] = []

    def compute(paths):
        calls.append([p.name for p in paths])
        return np.stack([np.full(4, float(p.stem)) for p in paths]).astype(np.float32), {}, None

    cache = QueryDescriptorCache(tmp_path / "c", state="v1")
    d, _, errors, stats = cache.get_or_compute(files, compute, 4)
    assert (stats.computed, stats.cached, errors) == (3, 0, {})
    assert d[:, 0].tolist() == [0.0, 1.0, 2.0]
    # a fresh cache object (a new run) recomputes nothing
    d2, _, _, stats2 = QueryDescriptorCache(tmp_path / "c", state="v1").get_or_compute(files, compute, 4)
    assert (stats2.computed, stats2.cached) == (0, 3) and np.array_equal(d, d2)
    # a touched file is recomputed alone; another state (vocabulary) recomputes everything
    os.utime(files[1], ns=(1, 1))
    _, _, _, stats3 = QueryDescriptorCache(tmp_path / "c", state="v1").get_or_compute(files, compute, 4)
    assert (stats3.computed, stats3.cached) == (1, 2) and calls[-1] == ["1.jpg"]
    _, _, _, stats4 = QueryDescriptorCache(tmp_path / "c", state="v2").get_or_compute(files, compute, 4)
    assert stats4.computed == 3


def test_query_cache_keeps_failures_out(tmp_path):
    files = [_tiny_jpeg(tmp_path / f"{i}.jpg") for i in range(2)]

    calls: list[list[str]] = []

    def compute(paths):
        calls.append([p.name for p in paths])
        return np.ones((len(paths), 2), np.float32), {0: "broken"}, None

    d, _, errors, stats = QueryDescriptorCache(tmp_path / "c", "s").get_or_compute(files, compute, 2)
    assert errors == {0: "broken"} and np.isnan(d[0]).all() and stats.computed == 1
    # the failed one is tried again next time, the good one is not
    _, _, errors2, stats2 = QueryDescriptorCache(tmp_path / "c", "s").get_or_compute(files, compute, 2)
    assert calls[-1] == ["0.jpg"] and errors2 == {0: "broken"}
    assert (stats2.computed, stats2.cached) == (0, 1)
