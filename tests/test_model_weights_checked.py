"""A model file's weights are checked when it is read: geoloc never builds a database on weights
that cannot give a descriptor, and never stores a descriptor that is not finite."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from geoloc.cli import app

runner = CliRunner()


def _model_file(tmp_path, name: str, change, **meta_changes) -> str:
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    from geoloc.models.model import build_model
    from geoloc.models.modelfile import save_model_file

    path = tmp_path / name
    save_model_file(build_model("lite0", "netvlad", num_clusters=4, pretrained_backbone=False), path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    meta.update(meta_changes)
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata=meta)
    return str(path)


def _nan(tensors):
    key = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 4)
    tensors[key][0] = float("nan")


def _half(tensors):
    for k, v in tensors.items():
        if v.is_floating_point():
            tensors[k] = v.half()


@pytest.mark.parametrize("vocabulary", ["fitted", "none"])
def test_a_model_file_with_nan_weights_is_refused_by_name_and_no_database_is_left(tmp_path, lund_dir, vocabulary):
    """With a fitted vocabulary such a file used to give a database of NaN that `check` called
    sound; without one, an internal error and an empty database bound to the model."""
    model = _model_file(tmp_path, "nan.safetensors", _nan, **({"vocabulary": "fitted"} if vocabulary == "fitted" else {}))
    db = tmp_path / "db"
    result = runner.invoke(app, ["index", str(lund_dir / "01.jpg"), str(lund_dir / "02.jpg"), "--db", str(db),
                                 "--model", model, "--json"])
    assert result.exit_code == 1, result.output
    line = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert len(line) == 1 and "nan.safetensors" in line[0] and "not finite" in line[0]
    assert "internal error" not in result.stderr and "Traceback" not in result.output
    assert not (db / "manifest.json").exists()


def test_a_half_precision_model_file_runs_as_float32(tmp_path, lund_dir):
    model = _model_file(tmp_path, "half.safetensors", _half)
    db = tmp_path / "db"
    result = runner.invoke(app, ["index", *[str(lund_dir / f"{i:02d}.jpg") for i in (1, 2, 3)], "--db", str(db),
                                 "--model", model, "--json", "--max-side", "160"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["indexed"], data["errors"]) == (3, 0)
    from geoloc.database import Database

    with Database.open(db) as database:
        _, matrix = database.descriptor_matrix(located_only=False)
    assert np.isfinite(matrix).all()


def test_a_descriptor_that_is_not_finite_is_never_stored(tmp_path, lund_dir, tiny_model, monkeypatch):
    from geoloc.database import Database
    from geoloc.indexing import run as indexer

    real_commit = Database.add_batch
    seen = []

    def spy(self, records, descriptors, maps=None):
        seen.append(np.asarray(descriptors).copy())
        return real_commit(self, records, descriptors, maps)

    monkeypatch.setattr(Database, "add_batch", spy)
    original = indexer.IndexRun.finite_only

    def poison(self, items, descriptors, stored):  # the network gave NaN for the second photo
        descriptors = np.array(descriptors, dtype=np.float32, copy=True)
        for i, item in enumerate(items):
            if item.path.name == "02.jpg":
                descriptors[i, 0] = np.nan
        return original(self, items, descriptors, stored)

    monkeypatch.setattr(indexer.IndexRun, "finite_only", poison)
    db = tmp_path / "db"
    result = runner.invoke(app, ["index", *[str(lund_dir / f"{i:02d}.jpg") for i in (1, 2, 3)], "--db", str(db),
                                 "--model", tiny_model, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["indexed"], data["errors"], data["total"]) == (2, 1, 2)
    assert "02.jpg" in data["error_files"][0]["path"] and "not finite" in data["error_files"][0]["reason"]
    assert all(np.isfinite(batch).all() for batch in seen)
