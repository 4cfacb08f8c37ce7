"""Every test runs as a user would: a private GEOLOC_HOME, an offline Hugging Face hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
    # CI has 2 cores; oversubscription makes torch tests several times slower.
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    try:
        import torch

        torch.set_num_threads(2)
    except Exception:
        pass
    yield
