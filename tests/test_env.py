"""What geoloc reads from the environment: each switch on its own, read when it matters."""

from __future__ import annotations

import pytest

from geoloc import env


@pytest.mark.parametrize("value, on", [("1", True), ("true", True), ("YES", True), (" on ", True),
                                       ("0", False), ("", False), ("no", False), ("2", False)])
def test_a_flag_is_on_only_for_the_usual_yes_words(monkeypatch, value, on):
    monkeypatch.setenv("GEOLOC_OFFLINE", value)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert env.flag("GEOLOC_OFFLINE") is on
    assert env.offline() is on


def test_hf_hub_offline_0_does_not_hide_geoloc_offline_1(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("GEOLOC_OFFLINE", "1")
    assert env.offline()
    monkeypatch.setenv("GEOLOC_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert env.offline()
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    assert not env.offline()


def test_geoloc_offline_also_keeps_the_hub_offline(monkeypatch, tmp_path):
    """One definition of offline: GEOLOC_OFFLINE=1 alone stops a Hugging Face download too."""
    from geoloc.errors import WeightsUnavailableError
    from geoloc.models.registry import download_model

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("GEOLOC_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # never contacted
    with pytest.raises(WeightsUnavailableError, match="offline"):
        download_model("netvlad-vgg16-pitts30k-128")


def test_geoloc_debug_is_a_flag_too(monkeypatch):
    monkeypatch.setenv("GEOLOC_DEBUG", "0")
    assert not env.debug()
    monkeypatch.setenv("GEOLOC_DEBUG", "1")
    assert env.debug()
