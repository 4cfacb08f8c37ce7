"""Every test runs as a user would: a private GEOLOC_HOME, an offline Hugging Face hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


#: What every test, and every session fixture before the tests, sees instead of the user's own.
_PRIVATE_ENV = ("GEOLOC_HOME", "XDG_DATA_HOME", "HF_HOME", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session", autouse=True)
def _user_folder_untouched(tmp_path_factory):
    """The suite leaves the user's geoloc folder as it found it.

    Session fixtures (``tiny_db``…) run before any test's own home is set: they get a home of
    the session's. The platform's user folder is a stand-in too (``XDG_DATA_HOME``), so that
    anything that would reach past ``GEOLOC_HOME`` lands where this check sees it; and the
    real folder (``~/.local/share/geoloc``) is compared, file by file, before and after.
    """
    from geoloc.paths import geoloc_home

    saved = {name: os.environ.get(name) for name in _PRIVATE_ENV}
    os.environ.pop("GEOLOC_HOME", None)
    real = geoloc_home()
    before = _listing(real)
    stand_in = tmp_path_factory.mktemp("user_data")
    home = tmp_path_factory.mktemp("session_home")
    os.environ.update(GEOLOC_HOME=str(home), XDG_DATA_HOME=str(stand_in), HF_HOME=str(home / "hf"),
                      HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    assert _listing(stand_in) == {}, "geoloc wrote into the user folder, not GEOLOC_HOME"
    assert _listing(real) == before, f"the test suite changed {real}"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("geoloc_home")
    monkeypatch.setenv("GEOLOC_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    # A private HF cache per test unless a test seeds one itself.
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("GEOLOC_DEBUG", raising=False)
    yield home


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"test photos not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def lund_dir(data_dir) -> Path:
    return data_dir / "lund" / "images"


@pytest.fixture(scope="session")
def exif_dir(data_dir) -> Path:
    return data_dir / "exif-samples"


@pytest.fixture(scope="session", autouse=True)
def _limit_threads():
    # CI has 2 cores; oversubscription makes torch tests several times slower. The suite runs in
    # two processes (pytest-xdist): one thread each then, and in the geoloc processes they start.
    threads = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        import torch

        torch.set_num_threads(threads)
    except Exception:
        pass
    yield


# ---------------------------------------------------------------------------------------------
# A tiny in-process model: for tests of formatting, errors and options, which need a model and a
# database but not a real network's accuracy. It is a real GeolocModel (two convolutions and a
# NetVLAD layer of 4 clusters, so the vocabulary path runs too) registered under its own name,
# with weights drawn from a fixed seed: the same descriptors on every run, in milliseconds.

TINY_MODEL = "test-tiny"
TINY_MAX_SIDE = 64


def _tiny_factory(entry):
    import torch
    from torch import nn

    from geoloc.models.model import GeolocModel
    from geoloc.models.netvlad import NetVLAD

    gen = torch.Generator().manual_seed(1234)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1))
    with torch.no_grad():
        for p in backbone.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    model = GeolocModel(backbone, NetVLAD(num_clusters=4, dim=16), arch="tiny", pooling="netvlad",
                        preprocess=entry.preprocess, name=entry.name, weights_hash="f" * 64, base=entry.name)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model() -> str:
    """The registry name of the tiny model (registered once for the whole session)."""
    from geoloc.models.preprocess import IMAGENET
    from geoloc.models.registry import ModelEntry, get_entry, register_model
    from geoloc.errors import ModelError

    try:
        get_entry(TINY_MODEL)
    except ModelError:
        register_model(ModelEntry(
            name=TINY_MODEL, description="two convolutions + NetVLAD (K=4), for tests", dim=4 * 16,
            source=None, preprocess=IMAGENET.replace(max_side=TINY_MAX_SIDE), offline=True,
            needs_vocabulary=True, default=False, arch="tiny", pooling="netvlad", num_clusters=4,
            factory=_tiny_factory,
        ))
    return TINY_MODEL


@pytest.fixture(scope="session")
def tiny_db(tmp_path_factory, tiny_model, lund_dir) -> Path:
    """The odd Lund frames indexed with the tiny model (a second or two)."""
    from geoloc.indexing.run import IndexConfig, index_photos

    db = tmp_path_factory.mktemp("tiny") / "db"
    report = index_photos([lund_dir / f"{i:02d}.jpg" for i in range(1, 30, 2)], db,
                          IndexConfig(model=tiny_model, device="cpu"))
    assert (report.located, report.errors) == (15, 0)
    return db


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread, here and in the geoloc processes a test starts (OMP_NUM_THREADS=1).

    For tests that compare descriptors of separate runs to 1e-5: on the CPU the extractor moves
    torch between the cores the decoding threads leave and all of them as it measures which is
    faster (geoloc.models.runtime.CoreShare), and when depends on the machine's load. Another
    thread count sums in another order (3.7e-5 on a local feature), which NetVLAD's
    intra-normalisation can blow up in a cluster holding almost nothing. One thread leaves the
    extractor no choice, so two runs compute every descriptor alike however busy CI is.
    """
    import torch

    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(before)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env
