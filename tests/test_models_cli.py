"""`geoloc models` and `geoloc models download`, run as a user runs them."""

from __future__ import annotations

import json
import os

import pytest
from hub_fixtures import (
    PATCH_NETVLAD_REPO,
    random_netvlad_weights,
    seed_hf_cache,
    write_pth_tar,
)
from typer.testing import CliRunner

from geoloc.cli import app

runner = CliRunner()
FIELDS = {"name", "description", "dim", "source", "offline", "cached", "default"}


def test_models_json_lists_every_entry_with_the_spec_fields():
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    by_name = {row["name"]: row for row in rows}
    assert all(FIELDS <= set(row) for row in rows)
    assert [r["name"] for r in rows if r["default"]] == ["netvlad-vgg16-pitts30k"]
    default = by_name["netvlad-vgg16-pitts30k"]
    assert default["dim"] == 4096 and default["offline"] is False and default["cached"] is False
    assert "TobiasRobotics/Patch-NetVLAD" in default["source"]
    lite = by_name["lite0-vlad"]
    assert lite["offline"] is True and lite["cached"] is True and lite["dim"] == 20480
    assert {"netvlad-vgg16-pitts30k-512", "netvlad-vgg16-pitts30k-128", "lite0-max", "lite0-avg", "lite0-gem"} <= set(
        by_name
    )
    assert by_name["netvlad-vgg16-pitts30k-128"]["dim"] == 128 and by_name["lite0-gem"]["dim"] == 320


def test_models_table_for_people():
    result = runner.invoke(app, ["models"], env={"COLUMNS": "140"})
    assert result.exit_code == 0
    for name in ("netvlad-vgg16-pitts30k *", "lite0-vlad", "lite0-gem"):
        assert name in result.stdout


def test_download_offline_without_cache_says_how_to_get_the_weights():
    """Why: offline, `geoloc models download NAME` answered "run `geoloc models download NAME`
    when online", which is what was just run. It names what switched downloads off instead."""
    result = runner.invoke(app, ["models", "download", "netvlad-vgg16-pitts30k"])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "cannot download netvlad-vgg16-pitts30k" in lines[0] and "HF_HUB_OFFLINE" in lines[0]
    assert "geoloc models download" not in lines[0]  # not the command that just failed
    assert "`--model lite0-vlad`" in lines[0]
    assert result.stdout == ""


def test_download_unknown_name_lists_the_valid_ones():
    result = runner.invoke(app, ["models", "download", "netvlad-resnet"])
    assert result.exit_code == 1
    assert "unknown model 'netvlad-resnet'" in result.stderr and "lite0-vlad" in result.stderr


def test_download_an_offline_model_needs_nothing():
    result = runner.invoke(app, ["models", "download", "lite0-vlad", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["name"] == "lite0-vlad"
    assert "needs no download" in result.stderr


def test_download_converts_a_cached_checkpoint_once(tmp_path, monkeypatch):
    pth = write_pth_tar(tmp_path / "pitts_WPCA128.pth.tar", random_netvlad_weights(whiten_dim=128, seed=2))
    cache = seed_hf_cache(tmp_path / "hub", PATCH_NETVLAD_REPO, {"pitts_WPCA128.pth.tar": pth})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    result = runner.invoke(app, ["models", "download", "netvlad-vgg16-pitts30k-128", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["dim"] == 128 and info["path"].endswith("netvlad-vgg16-pitts30k-128.safetensors")
    listed = {r["name"]: r for r in json.loads(runner.invoke(app, ["models", "--json"]).stdout)}
    assert listed["netvlad-vgg16-pitts30k-128"]["cached"] is True
    assert listed["netvlad-vgg16-pitts30k"]["cached"] is False


def test_the_mapillary_model_comes_from_its_own_file(tmp_path, monkeypatch):
    pth = write_pth_tar(tmp_path / "mapillary_WPCA128.pth.tar", random_netvlad_weights(whiten_dim=128, seed=3))
    cache = seed_hf_cache(tmp_path / "hub", PATCH_NETVLAD_REPO, {"mapillary_WPCA128.pth.tar": pth})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    listed = {r["name"]: r for r in json.loads(runner.invoke(app, ["models", "--json"]).stdout)}
    assert listed["netvlad-vgg16-msls-128"]["cached"] is True
    assert listed["netvlad-vgg16-pitts30k-128"]["cached"] is False
    result = runner.invoke(app, ["models", "download", "netvlad-vgg16-msls-128", "--json"])
    assert result.exit_code == 0, result.output
    converted = json.loads(result.stdout)["path"]
    assert converted.endswith("netvlad-vgg16-msls-128.safetensors")
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(converted).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


@pytest.mark.parametrize("args", [["models", "--help"], ["models", "download", "--help"]])
def test_help(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "Usage" in result.stdout
