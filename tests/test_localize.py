"""The estimator and the search, on positions and descriptors whose answer is known."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from geoloc.geo import from_local_m, haversine_m
from geoloc.locating.estimate import Estimate, EstimateConfig, assess_confidence, estimate_position
from geoloc.locating.results import Candidate, LocateResult
from geoloc.retrieval.search import SearchConfig, SearchIndex

LAT0, LON0 = 55.7048, 13.1930  # Lund


def _place(points_m):
    """Lat/lon of points given in metres east/north of LAT0, LON0."""
    lats, lons = zip(*(from_local_m(e, n, LAT0, LON0) for e, n in points_m))
    return list(lats), list(lons)


def test_single_candidate_is_the_estimate_with_the_single_radius():
    cfg = EstimateConfig()
    e = estimate_position([LAT0], [LON0], [0.7], cfg)
    assert e.lat == pytest.approx(LAT0) and e.lon == pytest.approx(LON0)
    assert e.radius_m == cfg.single_radius_m
    assert e.support == 1 and e.agreement == 1.0


def test_no_candidates_no_estimate():
    assert estimate_position([], [], []) is None


def test_equal_scores_give_the_midpoint():
    lats, lons = _place([(0, 0), (10, 0)])
    e = estimate_position(lats, lons, [0.8, 0.8])
    mid = from_local_m(5, 0, LAT0, LON0)
    assert haversine_m(e.lat, e.lon, *mid) < 0.01
    assert e.support == 2
    assert e.radius_m == pytest.approx(max(2 * 5.0, EstimateConfig().min_radius_m))


def test_higher_score_pulls_the_estimate():
    lats, lons = _place([(0, 0), (10, 0)])
    e = estimate_position(lats, lons, [0.9, 0.8])
    east = haversine_m(LAT0, LON0, e.lat, e.lon)
    assert 0 < east < 5


def test_a_consistent_group_outvotes_a_slightly_better_lone_outlier():
    # Top-1 is 800 m away; ranks 2-4 agree with each other within 12 m.
    lats, lons = _place([(800, 0), (0, 0), (8, 5), (-4, 6)])
    e = estimate_position(lats, lons, [0.80, 0.78, 0.77, 0.76])
    assert haversine_m(e.lat, e.lon, LAT0, LON0) < 10
    assert e.support == 3
    assert 0.5 < e.agreement < 1


def test_a_clearly_better_lone_match_wins_over_weak_agreement():
    lats, lons = _place([(800, 0), (0, 0), (8, 5), (-4, 6)])
    e = estimate_position(lats, lons, [0.95, 0.60, 0.59, 0.58])
    top1 = from_local_m(800, 0, LAT0, LON0)
    assert haversine_m(e.lat, e.lon, *top1) < 0.01
    assert e.support == 1


def test_radius_grows_with_the_spread_of_the_group_and_has_a_floor():
    tight = estimate_position(*_place([(0, 0), (1, 0), (0, 1)]), [0.8, 0.8, 0.8])
    loose = estimate_position(*_place([(0, 0), (20, 0), (0, 20)]), [0.8, 0.8, 0.8])
    assert tight.radius_m == EstimateConfig().min_radius_m
    assert loose.radius_m > tight.radius_m
    # The group's members lie within the radius.
    for e_, n_ in [(0, 0), (20, 0), (0, 20)]:
        assert haversine_m(loose.lat, loose.lon, *from_local_m(e_, n_, LAT0, LON0)) <= loose.radius_m


def test_mean_shift_gathers_a_chain_of_candidates():
    # A street: candidates every 8 m. The group settles where the weight is.
    lats, lons = _place([(8 * i, 0) for i in range(8)])
    scores = [0.9 - 0.02 * abs(i - 3) for i in range(8)]
    e = estimate_position(lats, lons, scores)
    x = haversine_m(LAT0, LON0, e.lat, e.lon)
    assert abs(x - 24) < 3


def test_antimeridian():
    e = estimate_position([10.0, 10.0], [179.99995, -179.99995], [0.8, 0.8])
    assert abs(abs(e.lon) - 180.0) < 1e-3
    assert haversine_m(e.lat, e.lon, 10.0, 180.0) < 1


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError):
        estimate_position([1.0, 2.0], [1.0], [0.5, 0.5])


def test_result_json_has_exactly_the_spec_fields():
    c = Candidate(1, Path("/a/b.jpg"), LAT0, LON0, 0.81234567, 3.456)
    r = LocateResult(Path("q.jpg"), Estimate(LAT0, LON0, 12.34, 2, 0.9), [c], (LAT0 + 1e-4, LON0))
    body = r.to_json()
    # The SPEC's fields, plus the confidence extension (``warnings``; ``estimate.confidence``).
    assert set(body) == {"query", "estimate", "candidates", "query_gps", "error_m", "error", "warnings", "taken_at", "taken_at_utc", "camera"}
    assert {"lat", "lon", "radius_m"} <= set(body["estimate"])
    assert body["estimate"]["confidence"] == "high" and body["warnings"] == []
    assert set(body["candidates"][0]) == {"rank", "path", "lat", "lon", "score", "distance_m", "verified"}
    assert body["candidates"][0]["rank"] == 1
    assert body["error_m"] == pytest.approx(11.12, abs=0.05)
    assert body["error"] is None

    failed = LocateResult(Path("bad.jpg"), error="bad.jpg: not an image").to_json()
    assert failed["estimate"] is None and failed["candidates"] == []
    assert failed["error_m"] is None and failed["query_gps"] is None
    assert failed["error"] == "bad.jpg: not an image"


# ---------------------------------------------------------------- search


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_flat_search_is_exact_cosine():
    rng = np.random.default_rng(0)
    db = _unit(rng.normal(size=(300, 32)))
    q = _unit(rng.normal(size=(5, 32)))
    index = SearchIndex(db)
    assert index.kind == "flat"
    scores, ids = index.search(q, 4)
    brute = q @ db.T
    for i in range(5):
        expected = np.argsort(-brute[i])[:4]
        assert list(ids[i]) == list(expected)
        assert np.allclose(scores[i], brute[i][expected], atol=1e-5)


def test_k_larger_than_the_database():
    db = _unit(np.eye(3, 8) + 0.01)
    scores, ids = SearchIndex(db).search(db[:1], 10)
    assert ids.shape == (1, 3)


def test_ivf_above_the_threshold_finds_near_duplicates():
    rng = np.random.default_rng(1)
    db = _unit(rng.normal(size=(6000, 64)))
    index = SearchIndex(db, SearchConfig(ivf_threshold=5000))
    assert index.kind == "ivf"
    assert index.nlist == round(4 * math.sqrt(6000))
    queries = _unit(db[:200] + 0.05 * rng.normal(size=(200, 64)))
    _, ids = index.search(queries, 1)
    recall = float(np.mean(ids[:, 0] == np.arange(200)))
    assert recall >= 0.95


def test_query_dimension_must_match():
    index = SearchIndex(_unit(np.ones((4, 8))))
    with pytest.raises(ValueError):
        index.search(np.ones((1, 7), dtype=np.float32), 1)


def test_ivf_index_is_cached_and_rebuilt_when_the_key_changes(tmp_path):
    rng = np.random.default_rng(2)
    db = _unit(rng.normal(size=(600, 16)))
    cfg = SearchConfig(ivf_threshold=500)
    cache = tmp_path / "cache" / "x.ivf.faiss"
    first = SearchIndex(db, cfg, cache=cache, cache_key="a")
    assert first.kind == "ivf" and not first.cached and cache.is_file()
    again = SearchIndex(db, cfg, cache=cache, cache_key="a")
    assert again.cached
    assert np.array_equal(first.search(db[:5], 3)[1], again.search(db[:5], 3)[1])
    assert not SearchIndex(db, cfg, cache=cache, cache_key="b").cached
    cache.write_bytes(b"damaged")
    assert not SearchIndex(db, cfg, cache=cache, cache_key="b").cached  # rebuilt, not crashed


def test_flat_search_reads_a_memory_mapped_matrix_in_place(tmp_path):
    rng = np.random.default_rng(3)
    x = _unit(rng.normal(size=(50, 8)))
    x.tofile(tmp_path / "d.f32")
    mm = np.memmap(tmp_path / "d.f32", dtype=np.float32, mode="r", shape=(50, 8))
    scores, ids = SearchIndex(mm).search(x[7], 1)
    assert ids[0, 0] == 7 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_ivf_is_built_only_when_the_batch_pays_for_it_or_a_cache_exists(tmp_path):
    rng = np.random.default_rng(4)
    db = _unit(rng.normal(size=(6000, 16)))
    cfg = SearchConfig(ivf_threshold=5000)
    cache = tmp_path / "x.ivf.faiss"
    few = SearchIndex(db, cfg, cache=cache, cache_key="k", n_queries=3)
    assert few.kind == "flat" and few.ivf_deferred and not cache.exists()
    assert few.search(db[:1], 1)[1][0, 0] == 0
    many = SearchIndex(db, cfg, cache=cache, cache_key="k", n_queries=100_000)
    assert many.kind == "ivf" and cache.is_file()
    again = SearchIndex(db, cfg, cache=cache, cache_key="k", n_queries=1)
    assert again.kind == "ivf" and again.cached and not again.ivf_deferred


# ---------------------------------------------------------------- confidence


def _est(agreement: float, support: int = 3, considered: int = 10) -> Estimate:
    return Estimate(LAT0, LON0, 20.0, support, agreement, considered)


def test_confidence_levels_follow_the_reference_and_the_agreement():
    """Why: a query from a place the database does not cover still gets an estimate; the user
    must be told that it rests on nothing (weak best match) or on a split vote."""
    assert assess_confidence(_est(0.9), 0.50, 0.31).confidence == "high"
    # No verification and no bar: nothing tells the place from a look-alike, so never high.
    blind = assess_confidence(_est(0.9), 0.50, None)
    assert blind.confidence == "medium" and "unverified" in blind.warnings[0]

    weak = assess_confidence(_est(0.9), 0.26, 0.31)
    assert weak.confidence == "low"
    assert len(weak.warnings) == 1 and "weak match" in weak.warnings[0] and "0.260" in weak.warnings[0]
    # A query that matched nothing: the radius says so (kilometres, not the group's 20 m).
    assert weak.radius_m >= 1000.0
    # Scores that round alike are printed with the digits that tell them apart.
    close = assess_confidence(_est(0.9), 0.42468, 0.42512)
    assert "0.4247 is below 0.4251" in close.warnings[0]

    split = assess_confidence(_est(0.4), 0.50, 0.31)
    assert split.confidence == "medium" and "disagree" in split.warnings[0]

    both = assess_confidence(_est(0.4), 0.20, 0.31)
    assert both.confidence == "low" and len(both.warnings) == 2

    # A single candidate cannot disagree with itself.
    assert assess_confidence(_est(0.2, 1, 1), 0.5, 0.3).confidence == "high"


def test_one_look_alike_alone_is_not_high_without_verification():
    """A palm tree against a street database holding one flower photo: the flower scores far
    above the rest (agreement 0.98) and above the bar, but it is one photo, not a place that
    several agree on; only geometric verification could make it ``high``."""
    lone = assess_confidence(_est(0.98, support=1), 0.50, 0.31)
    assert lone.confidence == "medium" and "unconfirmed" in lone.warnings[0]
    assert assess_confidence(_est(0.98, support=2), 0.50, 0.31).confidence == "high"
    verified = assess_confidence(_est(0.98, support=1), 0.50, None, verification="verified", top_inliers=80)
    assert verified.confidence == "high" and verified.warnings == []


def test_result_warnings_come_from_the_estimate():
    r = LocateResult(Path("q.jpg"), assess_confidence(_est(0.3), 0.1, 0.3), [])
    body = r.to_json()
    assert body["estimate"]["confidence"] == "low"
    assert body["warnings"] == r.warnings and len(r.warnings) == 2
    assert LocateResult(Path("bad.jpg"), error="x").to_json()["warnings"] == []


def test_the_weak_match_bar_needs_other_places_to_be_tested_against():
    """A bar from same-place pairs alone is untested: on one short street (no photos 50 m apart)
    there is none, and an unverified answer is then at most medium, not high for a cat."""
    from geoloc.locating.coverage import score_reference
    from geoloc.geo import from_local_m

    rng = np.random.default_rng(0)

    class Exact:
        def __init__(self, m):
            self.m = m

        def search(self, q, k):
            s = q @ self.m.T
            ids = np.argsort(-s, axis=1)[:, :k]
            return np.take_along_axis(s, ids, axis=1), ids

    def street(length_m: float, n: int):
        latlon = np.array([from_local_m(e, 0.0, LAT0, LON0) for e in np.linspace(0, length_m, n)])
        base = rng.normal(size=(n, 32)).astype(np.float32)
        # neighbours along the street look alike: each descriptor mixes in the previous one
        m = base.copy()
        for i in range(1, n):
            m[i] = 0.6 * m[i - 1] + 0.8 * base[i]
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        return m, latlon[:, 0], latlon[:, 1]

    short, lats, lons = street(48.0, 9)  # every pair within 50 m
    assert score_reference(Exact(short), short, lats, lons) is None
    long_, lats, lons = street(300.0, 40)  # 7.7 m apart, far pairs score lower
    bar = score_reference(Exact(long_), long_, lats, lons)
    assert bar is not None and 0 < bar < 1
