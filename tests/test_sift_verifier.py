"""The classical verifier (``RerankConfig.verifier = "sift"``), on real Lund photos.

SIFT keypoints come from the photo files, not from the network, so the tiny model serves: the
database is indexed at 640 px (the size SIFT runs at) and the keypoints alone must tell the
frames next to the query from the rest of the walk.
"""

from __future__ import annotations

import shutil

import pytest

from geoloc.errors import UsageError
from geoloc.geo import haversine_m
from geoloc.locating.locator import LocateConfig, Locator
from geoloc.retrieval.rerank import RerankConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sift_db(tmp_path_factory, tiny_model, lund_dir):
    from geoloc.indexing.run import IndexConfig, index_photos

    root = tmp_path_factory.mktemp("sift")
    photos = root / "photos"
    photos.mkdir()
    for i in range(1, 30, 2):
        shutil.copy2(lund_dir / f"{i:02d}.jpg", photos / f"{i:02d}.jpg")
    db = root / "db"
    report = index_photos(sorted(photos.glob("*.jpg")), db, IndexConfig(model=tiny_model, max_side=640, device="cpu"))
    assert report.located == 15
    return db, photos


def sift_config(**rerank) -> LocateConfig:
    return LocateConfig(device="cpu", top_k=15, rerank=RerankConfig(verifier="sift", **rerank))


def test_sift_verification_puts_a_neighbouring_frame_first(sift_db, lund_dir):
    db, _ = sift_db
    with Locator(db, sift_config()) as locator:
        results = locator.locate([lund_dir / "14.jpg", lund_dir / "22.jpg"])
    for r in results:
        assert r.error is None and len(r.candidates) == 15
        assert all(c.inliers is not None for c in r.candidates)  # all 15 verified (top 20)
        far = [c.inliers for c in r.candidates
               if haversine_m(c.lat, c.lon, *r.query_gps) > 25]
        top = r.candidates[0]
        assert haversine_m(top.lat, top.lon, *r.query_gps) < 15, top
        assert top.inliers > max(far), (top.inliers, far)
        assert r.estimate.verification == "verified"


def test_sift_falls_back_to_the_global_score_when_a_file_is_gone(sift_db, lund_dir):
    db, photos = sift_db
    gone = photos / "29.jpg"
    kept = gone.with_suffix(".bak")
    shutil.move(gone, kept)
    try:
        with Locator(db, sift_config()) as locator:
            (r,) = locator.locate([lund_dir / "14.jpg"])
    finally:
        shutil.move(kept, gone)
    by_name = {c.path.name: c for c in r.candidates}
    assert by_name["29.jpg"].inliers is None
    assert sum(c.inliers is not None for c in r.candidates) == 14
    assert any("29.jpg" in w and "gone" in w for w in r.warnings)


def test_sift_and_dense_agree_on_the_global_order_with_no_rerank(sift_db, lund_dir):
    """The verifier changes nothing when re-ranking is off."""
    db, _ = sift_db
    orders = []
    for verifier in ("dense", "sift"):
        cfg = LocateConfig(device="cpu", rerank=RerankConfig(enabled=False, verifier=verifier))
        with Locator(db, cfg) as locator:
            (r,) = locator.locate([lund_dir / "14.jpg"])
        orders.append([c.path for c in r.candidates])
    assert orders[0] == orders[1]


def test_an_unknown_verifier_is_a_usage_error(sift_db):
    db, _ = sift_db
    with pytest.raises(UsageError, match="unknown verifier"):
        Locator(db, LocateConfig(rerank=RerankConfig(verifier="orb")))


def test_eval_with_the_sift_verifier(sift_db, lund_dir):
    from geoloc.evaluation import EvalConfig
    from geoloc.evaluation.existing import evaluate_database

    db, _ = sift_db
    result = evaluate_database(db, [lund_dir / f"{i:02d}.jpg" for i in (6, 14, 22)],
                               EvalConfig(device="cpu", rerank_verifier="sift"))
    assert result.reranked and result.summary.queries == 3
    assert result.summary.recall[1] == 1.0
