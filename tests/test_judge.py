"""`geoloc eval` measures what `geoloc locate` does: one rank-and-judge for both.

A benchmark split is evaluated (its database built into the eval cache), then the same queries
are located against that very database: each query's estimate, radius and confidence must be
the same, with re-ranking and without, and with estimate and confidence settings of their own.
"""

from __future__ import annotations

import os

import pytest

from geoloc.locating.estimate import ConfidenceConfig, EstimateConfig


@pytest.mark.parametrize("rerank", [True, False], ids=["reranked", "cosine-only"])
def test_eval_and_locate_give_the_same_answer(tiny_model, lund_dir, rerank):
    from geoloc.evaluation import EvalConfig, evaluate_split
    from geoloc.evaluation.datasets import read_exif_split
    from geoloc.evaluation.runner import EXACT_SEARCH
    from geoloc.locating.locator import LocateConfig, Locator
    from geoloc.retrieval.rerank import RerankConfig
    from geoloc.retrieval.search import SearchConfig

    photos = sorted(lund_dir.glob("*.jpg"))
    split = read_exif_split(photos[1::2], photos[0::2])
    # Settings of their own: eval must hand them to the estimate as locate does.
    estimate = EstimateConfig(group_radius_m=40.0, temperature=0.08)
    confidence = ConfidenceConfig(min_reference_photos=4)
    config = EvalConfig(model=tiny_model, device="cpu", rerank=rerank, rerank_top=8, estimate_k=6,
                        estimate=estimate, confidence=confidence)
    result = evaluate_split(split, config)

    locate = LocateConfig(top_k=config.search_depth, estimate_k=6, device="cpu",
                          search=SearchConfig(ivf_threshold=EXACT_SEARCH),
                          rerank=RerankConfig(enabled=rerank, top=8), estimate=estimate, confidence=confidence)
    with Locator(result.cache / "database", locate) as locator:
        answers = locator.locate(split.query_paths)

    assert len(answers) == len(result.outcomes) == len(split.query_paths)
    assert result.reranked is rerank
    for outcome, answer in zip(result.outcomes, answers):
        assert answer.error is None and outcome.error is None, (answer.error, outcome.error)
        est = answer.estimate
        assert (outcome.estimate_lat, outcome.estimate_lon) == pytest.approx((est.lat, est.lon), abs=1e-9)
        assert outcome.radius_m == pytest.approx(est.radius_m, rel=1e-9)
        assert (outcome.confidence, outcome.verification) == (est.confidence, est.verification)
        # The same photos in the same order (each side may name them through another link).
        assert [os.path.realpath(c.path) for c in outcome.candidates] == \
            [os.path.realpath(c.path) for c in answer.candidates]
    if rerank:
        assert any(o.verification is not None for o in result.outcomes)


def test_eval_defaults_are_locates():
    """Without settings of its own, eval judges with locate's defaults."""
    from geoloc.evaluation import EvalConfig
    from geoloc.locating.locator import LocateConfig

    assert EvalConfig().estimate == LocateConfig().estimate
    assert EvalConfig().confidence == LocateConfig().confidence
