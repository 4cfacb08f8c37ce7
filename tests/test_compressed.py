"""The compressed search (IVF-PQ, exact re-scoring from the store) on real-derived descriptors:
the same top-1 as exact search for real queries, a cache that is extended, retrained and rebuilt,
and shards merged by faiss (merge_from, on-disk inverted lists) that give the same answers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from geoloc.retrieval.compressed import CompressedConfig, CompressedSearch, FOLDER, STATE, add_rows, merge_on_disk, train
from geoloc.database import Database, PhotoRecord
from geoloc.locating.locator import LocateConfig, Locator
from geoloc.retrieval.rerank import RerankConfig
from geoloc.retrieval.search import SearchConfig

COPIES = 24  # perturbed copies of each real descriptor: ~3,000 in all


def _compressed(threshold: int = 1000, **kw) -> SearchConfig:
    return SearchConfig(ivf_threshold=threshold, compressed=CompressedConfig(threshold=threshold, **kw))


@pytest.fixture(scope="module")
def real(tiny_model, tiny_db, data_dir) -> np.ndarray:
    """Descriptors of real photos (lund's odd frames, Sacré-Cœur, the exif samples' JPEGs)."""
    from geoloc.descriptors.database_model import load_database_model, query_extractor

    photos = sorted((data_dir / "sacre_coeur").rglob("*.jpg")) + sorted((data_dir / "exif-samples" / "jpg").rglob("*.jpg"))
    with Database.open(tiny_db) as database:
        _, stored = database.descriptor_matrix()
        extractor = query_extractor(load_database_model(database, "cpu"), database)
        rows = [np.asarray(stored)] + [d for _, d in extractor.descriptors(photos)]
    return np.concatenate(rows)


def _perturbed(real: np.ndarray, copies: int, seed: int) -> np.ndarray:
    """Each real descriptor with small perturbations: cosine about 0.95 with it."""
    rng = np.random.default_rng(seed)
    base = np.repeat(real, copies, axis=0)
    noise = rng.standard_normal(base.shape).astype(np.float32)
    noise *= 0.3 / np.linalg.norm(noise, axis=1, keepdims=True)
    out = base + noise
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def _add(db: Path, descriptors: np.ndarray, start: int) -> None:
    """Stored photos for the descriptors (files that do not exist: only positions matter here)."""
    rng = np.random.default_rng(start)
    with Database.open(db, write=True) as database:
        records = [PhotoRecord(path=Path(f"/nowhere/derived/{start + i:06d}.jpg"), size=1, mtime_ns=1,
                               sha256=f"{start + i:064x}", lat=55.70 + rng.uniform(0, 0.01),
                               lon=13.19 + rng.uniform(0, 0.01), gps_source="exif")
                   for i in range(len(descriptors))]
        database.add_batch(records, descriptors, [None] * len(records))


@pytest.fixture
def derived_db(tiny_db, real, tmp_path) -> Path:
    db = tmp_path / "db"
    shutil.copytree(tiny_db, db)
    _add(db, _perturbed(real, COPIES, seed=1), start=0)
    return db


def _top1(db: Path, queries, search: SearchConfig) -> tuple[list, str]:
    config = LocateConfig(top_k=3, search=search, rerank=RerankConfig(enabled=False))
    with Locator(db, config) as locator:
        results = locator.locate(queries)
        kind = getattr(locator.index, "kind", "")
        how = getattr(locator.index, "how", None)
    return [(r.candidates[0].path, round(r.candidates[0].score, 5)) for r in results], f"{kind}:{how}"


def test_compressed_top1_is_exact_top1_for_real_queries(derived_db, lund_dir, real):
    """~3,000 real-derived descriptors: the real queries (lund's even frames, as photos) get the
    exact search's top-1 photo with the exact score."""
    queries = [lund_dir / f"{i:02d}.jpg" for i in range(2, 29, 2)]
    exact, kind = _top1(derived_db, queries, SearchConfig(ivf_threshold=10**9))
    assert kind.startswith("flat")
    compressed, kind = _top1(derived_db, queries, _compressed())
    assert kind == "ivfpq:built"
    assert compressed == exact

    with Database.open(derived_db) as database:  # the real descriptors themselves as queries
        records, file = database.descriptor_file()
    rows = np.fromiter((r.row for r in records), dtype=np.int64)
    config = CompressedConfig(threshold=0)
    index = train(file, rows, config)
    add_rows(index, file, 0, len(file))
    search = CompressedSearch(index, file, rows, config)
    got = search.search(real, 1)[1][:, 0]
    want = np.argmax(np.asarray(file[rows]) @ real.T, axis=0)
    assert (got == want).mean() == 1.0
    assert search.memory_bytes() < file.nbytes  # 64-D is too small to be much smaller; see docs/scale.md


def test_the_index_is_a_cache_extended_retrained_and_rebuilt(derived_db, lund_dir, real):
    queries = [lund_dir / "04.jpg", lund_dir / "18.jpg"]
    first, kind = _top1(derived_db, queries, _compressed())
    assert kind == "ivfpq:built" and (derived_db / FOLDER / STATE).is_file()
    assert _top1(derived_db, queries, _compressed()) == (first, "ivfpq:cached")

    _add(derived_db, _perturbed(real[:20], 4, seed=2), start=10**5)  # a few more photos
    again, kind = _top1(derived_db, queries, _compressed())
    assert kind == "ivfpq:extended"
    assert again == _top1(derived_db, queries, SearchConfig(ivf_threshold=10**9))[0]

    _add(derived_db, _perturbed(real, COPIES * 4, seed=3), start=2 * 10**5)  # outgrown: 5× the rows
    grown, kind = _top1(derived_db, queries, _compressed())
    assert kind == "ivfpq:retrained"
    assert grown == _top1(derived_db, queries, SearchConfig(ivf_threshold=10**9))[0]

    shutil.rmtree(derived_db / FOLDER)  # never needed: deleted, it is built again
    assert _top1(derived_db, queries, _compressed()) == (grown, "ivfpq:built")
    (derived_db / FOLDER / STATE).write_text("{not json")  # damaged: rebuilt, not trusted
    assert _top1(derived_db, queries, _compressed()) == (grown, "ivfpq:built")


def test_a_compaction_renumbering_rows_means_a_new_index(derived_db, lund_dir):
    queries = [lund_dir / "10.jpg"]
    _top1(derived_db, queries, _compressed())
    with Database.open(derived_db, write=True) as database:
        gone = [r.path for r in database.photos()[15:400]]
        database.remove(gone)
        database.compact()
    got, kind = _top1(derived_db, queries, _compressed())
    assert kind == "ivfpq:built"
    assert got == _top1(derived_db, queries, SearchConfig(ivf_threshold=10**9))[0]


def test_shards_merged_by_faiss_answer_as_one_index(real, tmp_path):
    """merge_from in RAM and on-disk inverted lists (faiss.contrib.ondisk) give the answers of
    one index filled in one go."""
    import faiss

    file = _perturbed(real, 16, seed=4)
    rows = np.arange(len(file))
    config = CompressedConfig(threshold=0)
    trained = train(file, rows, config)
    whole = faiss.clone_index(trained)
    add_rows(whole, file, 0, len(file))
    want = CompressedSearch(whole, file, rows, config).search(real, 5)

    cut = [0, 700, 1500, len(file)]
    merged = faiss.clone_index(trained)
    files = []
    for i, (a, b) in enumerate(zip(cut[:-1], cut[1:])):
        shard = faiss.clone_index(trained)
        add_rows(shard, file, a, b)
        faiss.write_index(shard, str(tmp_path / f"shard{i}.faiss"))
        files.append(tmp_path / f"shard{i}.faiss")
        merged.merge_from(shard, 0)
    on_disk = merge_on_disk(faiss.clone_index(trained), files, tmp_path / "lists.ivfdata")
    for index in (merged, on_disk):
        got = CompressedSearch(index, file, rows, config).search(real, 5)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], atol=1e-6)


def test_indexing_keeps_the_compressed_index_current(tiny_model, lund_dir, tmp_path):
    from geoloc.indexing.run import IndexConfig, index_photos

    db = tmp_path / "db"
    config = IndexConfig(model=tiny_model, device="cpu", vocabulary_photos=4, search=_compressed(threshold=10))
    odd = [lund_dir / f"{i:02d}.jpg" for i in range(1, 30, 2)]
    assert index_photos(odd, db, config).search_index == "built"
    assert index_photos(odd, db, config).search_index == "cached"
    assert index_photos(sorted(lund_dir.glob("*.jpg")), db, config).search_index == "extended"
    below = IndexConfig(model=tiny_model, device="cpu")
    assert index_photos(odd, db, below).search_index is None

    from typer.testing import CliRunner

    from geoloc.cli import app

    result = CliRunner().invoke(app, ["check", "--db", str(db)])  # the cache is no damage
    assert result.exit_code == 0, result.output
