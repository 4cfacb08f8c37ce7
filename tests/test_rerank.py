"""Re-ranking by geometric verification, on real photos made hard the way nights are hard.

The database holds the odd Lund frames at 640 px (the default size, where verification was
measured); queries are even frames darkened as a night photo is dark: exposure ×0.25, gamma 2.2,
Gaussian noise σ = 4/255 (the brightest pixel ends near 12/255). On such queries the global
descriptor alone picks a look-alike tens of metres away.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from geoloc.cli import app
from geoloc.geo import haversine_m

pytestmark = pytest.mark.slow


def darken(src: Path, dest: Path, seed: int = 0) -> Path:
    """The night variant of a photo, its EXIF (and so its GPS, the truth) kept."""
    image = Image.open(src)
    exif = image.info.get("exif", b"")
    a = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    d = np.clip(a * 0.25, 0, 1) ** 2.2 + np.random.default_rng(seed).normal(0, 4 / 255, a.shape)
    Image.fromarray((np.clip(d, 0, 1) * 255).round().astype(np.uint8)).save(dest, quality=92, exif=exif)
    return dest


def locate(*args) -> list[dict]:
    result = CliRunner().invoke(app, ["locate", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def top1_error(o: dict) -> float:
    c = o["candidates"][0]
    return float(haversine_m(c["lat"], c["lon"], o["query_gps"]["lat"], o["query_gps"]["lon"]))


@pytest.fixture(scope="module")
def night(tmp_path_factory, lund_dir):
    from geoloc.indexing.run import IndexConfig, index_photos

    root = tmp_path_factory.mktemp("night")
    db = root / "db"
    report = index_photos([lund_dir / f"{i:02d}.jpg" for i in range(1, 30, 2)], db,
                          IndexConfig(model="lite0-vlad", max_side=640, device="cpu"))
    assert report.located == 15
    queries = root / "dark"
    queries.mkdir()
    dark = {n: darken(lund_dir / f"{n:02d}.jpg", queries / f"{n:02d}.jpg", seed=n) for n in (18, 28)}
    return db, dark


def test_verification_puts_the_right_place_first_on_a_night_photo(night):
    db, dark = night
    before = locate(*dark.values(), "--db", db, "--no-rerank")
    after = locate(*dark.values(), "--db", db)
    for b, a in zip(before, after):
        assert top1_error(b) > 25, b["candidates"][0]  # the global descriptor alone: a look-alike
        assert top1_error(a) < 10, a["candidates"][0]  # verified: the right place
        assert a["candidates"][0]["verified"]["inliers"] > max(
            c["verified"]["inliers"] for c in a["candidates"][1:3])
        assert a["error_m"] < b["error_m"]


def test_no_rerank_is_exactly_the_global_search(night):
    """--no-rerank: the candidates in descending cosine, nothing verified, as before re-ranking."""
    from geoloc.database import Database
    from geoloc.retrieval.search import SearchIndex

    db, dark = night
    (o,) = locate(dark[18], "--db", db, "--no-rerank", "--top-k", "8")
    assert all(c["verified"] is None for c in o["candidates"]) and o["estimate"]["verification"] is None
    scores = [c["score"] for c in o["candidates"]]
    assert scores == sorted(scores, reverse=True)
    with Database.open(db) as database:
        from geoloc.descriptors.database_model import load_database_model, query_extractor

        records, matrix = database.descriptor_matrix()
        model = load_database_model(database, "cpu")
        ((_, query),) = list(query_extractor(model, database).descriptors([dark[18]]))
        _, ids = SearchIndex(np.asarray(matrix)).search(query, 8)
    assert [c["path"] for c in o["candidates"]] == [str(records[j].path) for j in ids[0]]


def test_out_of_coverage_photos_find_no_match(night, exif_dir):
    db, _ = night
    out = locate(*sorted((exif_dir / "jpg" / "gps").glob("DSCN00*.jpg"))[:3], "--db", db)
    for o in out:
        assert o["estimate"]["verification"] == "no match" and o["estimate"]["confidence"] == "low", o


def test_a_candidate_whose_file_is_gone_keeps_its_global_score(tiny_model, lund_dir, tmp_path):
    """A database without stored maps verifies from the photo files; a file deleted since
    is ranked by its global score alone, and the answer says so."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(1, 30, 2):
        shutil.copy2(lund_dir / f"{i:02d}.jpg", photos / f"{i:02d}.jpg")
    db = tmp_path / "db"
    result = CliRunner().invoke(app, ["index", str(photos), "--db", str(db), "--model", tiny_model, "--no-maps", "-q"])
    assert result.exit_code == 0, result.output
    assert not (db / "maps.i8").exists()
    (before,) = locate(lund_dir / "14.jpg", "--db", db, "--no-rerank")
    gone = Path(before["candidates"][0]["path"])
    gone.unlink()
    (after,) = locate(lund_dir / "14.jpg", "--db", db, "--top-k", "15")  # all of them
    by_path = {c["path"]: c for c in after["candidates"]}
    assert by_path[str(gone)]["verified"] is None
    assert sum(c["verified"] is not None for c in after["candidates"]) == len(after["candidates"]) - 1
    assert any(str(gone) in w and "gone" in w for w in after["warnings"])
