"""`geoloc finetune` as users run it: on the Lund walk with the offline lite0 backbone, a short
run lowers the loss, writes a model that `geoloc index --model FILE` and `geoloc locate` use,
and `--resume` continues from the checkpoint. Plus the one-line errors for unusable data."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from geoloc.cli import app

# Small and short so the whole file fits about a minute on two cores.
FAST = ["--base", "lite0-vlad", "--max-side", "224", "--negatives", "5", "--workers", "2"]


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def data(result) -> dict | list:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, lund_dir):
    """One 2-epoch finetune shared by the tests below (its own GEOLOC_HOME, offline hub)."""
    root = tmp_path_factory.mktemp("finetune")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GEOLOC_HOME", str(root / "home"))
        mp.setenv("HF_HOME", str(root / "home" / "hf"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        out = root / "lund.safetensors"
        result = run("finetune", lund_dir, "--out", out, "--epochs", "2", *FAST, "--json")
        summary = data(result)
    return root, out, summary, result.stderr


@pytest.mark.slow
def test_a_short_run_lowers_the_loss_and_writes_a_model(trained):
    _, out, summary, stderr = trained
    assert out.is_file() and not (out.parent / f"{out.name}.ckpt").exists()  # complete: nothing to resume
    assert summary["checkpoint"] is None
    assert summary["photos"] == 29 and summary["epochs_run"] == 2
    assert summary["train_photos"] + summary["val_photos"] == 29 and summary["val_photos"] > 0
    objectives = [h["objective"] for h in summary["history"]]
    assert [h["epoch"] for h in summary["history"]] == [0, 1, 2]
    assert objectives[-1] < objectives[0], objectives
    assert summary["history"][1]["trained"] > 0 and summary["history"][1]["loss"] > 0
    assert set(summary["validation"]["recall"]) == {"1", "5", "10"}
    assert "epoch 2/2" in stderr and "recall@1/5/10" in stderr
    # Off a terminal (a pipe, a log) no bar shows: each phase is a line when it starts, so the
    # minutes before the first epoch line are not silent; each said once.
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    first = next(i for i, line in enumerate(lines) if line.startswith("start"))
    assert "reading photos (29) …" in lines[:first] and "descriptors (29) …" in lines[:first], lines
    assert len(lines) == len(set(lines)), lines

    from geoloc.models.modelfile import read_model_metadata
    from geoloc.models.registry import load_model

    meta = read_model_metadata(out)
    assert meta["base"] == "lite0-vlad" and meta["vocabulary"] == "fitted"
    assert json.loads(meta["finetune"])["margin"] == 0.1
    assert set(json.loads(meta["validation_recall"])) == {"1", "5", "10"}
    model = load_model(out)
    assert model.dim == summary["dim"] == 64 * 320 and model.preprocess.max_side == 224
    assert not model.needs_vocabulary


@pytest.mark.slow
def test_the_model_indexes_and_locates(trained, lund_dir, tmp_path):
    _, out, _, _ = trained
    db = tmp_path / "db"
    odd = [lund_dir / f"{i:02d}.jpg" for i in range(1, 30, 2)]
    even = [lund_dir / f"{i:02d}.jpg" for i in range(2, 29, 2)]
    indexed = data(run("index", *odd, "--db", db, "--model", out, "--json"))
    assert indexed["indexed"] == 15 and indexed["errors"] == 0
    located = data(run("locate", *even[:4], "--db", db, "--json"))
    assert len(located) == 4
    for item in located:
        assert item["error"] is None and item["estimate"] is not None
        assert item["error_m"] is not None and item["error_m"] < 100
        # re-ranking (the default) runs on a fine-tuned model file's own maps too
        assert all(c["verified"] is not None for c in item["candidates"])
        assert item["estimate"]["verification"] in ("verified", "unverified", "no match")


@pytest.mark.slow
def test_the_model_evaluates_alone_and_against_its_base(trained, lund_dir):
    """`geoloc eval --model FILE` and `--compare lite0-vlad,FILE`: the study a user runs to see
    whether fine-tuning helped, on the same split (odd frames database, even frames queries)."""
    _, out, _, _ = trained
    # dense verification: the study compares models, whatever verifies them (test_learned tests the default)
    split = [f"{lund_dir}/*[02468].jpg", "--db-images", f"{lund_dir}/*[13579].jpg", "--verifier", "dense"]
    alone = data(run("eval", *split, "--model", out, "--json"))
    assert alone["queries"] == 14 and alone["dim"] == 64 * 320 and alone["recall"]["20"] == 1.0
    both = data(run("eval", *split, "--compare", f"lite0-vlad,{out}", "--max-side", "224", "--json"))
    rows = {r["model"]: r for r in both["models"]}
    assert list(rows) == ["lite0-vlad", "lite0-vlad +rerank", str(out), f"{out} +rerank"]
    assert all(r["status"] == "ok" and r["queries"] == 14 for r in rows.values())
    # the file was trained at 224 px and keeps that size, so --max-side 224 changes nothing for it
    assert rows[f"{out} +rerank"]["recall"] == alone["recall"]


@pytest.mark.slow
def test_resume_continues_an_interrupted_run(lund_dir, tmp_path):
    """A run stopped in its second epoch (as Ctrl-C stops it) is refused a plain re-run, and
    `--resume` (with more epochs and a PCA this time) carries it to a model file, after which
    no checkpoint is left."""
    from geoloc.training.data import photos_from_paths
    from geoloc.training.finetune import FinetuneConfig, finetune

    out = tmp_path / "lund.safetensors"
    photos, _ = photos_from_paths([lund_dir], lambda e: None)
    config = FinetuneConfig(base="lite0-vlad", max_side=224, n_neg=5, epochs=2)
    config.workers = 2

    def stop_in_epoch_2(trainer):
        if trainer.epoch == 1:
            trainer.request_stop()

    with pytest.raises(KeyboardInterrupt):
        finetune(photos, out, config, on_step=stop_in_epoch_2)
    assert (tmp_path / f"{out.name}.ckpt" / "last.pt").is_file() and not out.exists()

    again = run("finetune", lund_dir, "--out", out, "--epochs", "2", *FAST)
    assert again.exit_code == 1
    assert "--resume" in again.stderr and "--restart" in again.stderr

    resumed = data(run("finetune", lund_dir, "--out", out, "--epochs", "3", *FAST, "--resume",
                       "--pca", "16", "--json"))
    assert resumed["resumed"] and resumed["epochs_run"] == 3
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2, 3]
    assert resumed["pca"]["dim"] == 16 and resumed["dim"] == 16
    assert not (tmp_path / f"{out.name}.ckpt").exists()

    from geoloc.models.registry import load_model

    assert load_model(out).dim == 16


@pytest.mark.slow
def test_a_finished_run_runs_again_without_restart(trained, lund_dir, tmp_path):
    """Why: "train it again" after a finished run is not "continue an interrupted run". Here
    the checkpoint a finished run left behind (geoloc 0.1.0 kept it; a crash between writing
    the model and removing it does too): older than the model file, it is no run to resume."""
    import os

    _, out, _, _ = trained
    moved = tmp_path / "lund.safetensors"
    shutil.copy(out, moved)
    leftover = tmp_path / f"{moved.name}.ckpt"
    leftover.mkdir()
    (leftover / "last.pt").write_bytes(b"the last checkpoint of the run that wrote the model")
    (leftover / "best.pt").write_bytes(b"its best epoch")
    written = moved.stat().st_mtime_ns
    os.utime(leftover / "last.pt", ns=(written - 10**9, written - 10**9))

    refused = run("finetune", lund_dir, "--out", moved, "--resume", *FAST)
    assert refused.exit_code == 1
    assert "finished" in refused.stderr and "nothing to resume" in refused.stderr
    assert f"--base {moved}" in refused.stderr

    again = data(run("finetune", lund_dir, "--out", moved, "--epochs", "1", *FAST, "--json"))
    assert again["epochs_run"] == 1 and not again["resumed"]
    assert moved.stat().st_mtime_ns > written and not leftover.exists()


@pytest.mark.parametrize("kind", ["folder", "suffix", "missing folder", "read-only folder"])
def test_a_bad_out_is_refused_before_any_photo_is_read(lund_dir, tmp_path, monkeypatch, kind):
    """Why: reading every photo's EXIF takes minutes on a real archive; a typo in --out must
    not cost them."""
    import os

    import geoloc.training.data as data_module

    def no_reading(*args, **kwargs):
        raise AssertionError("photos were read before --out was checked")

    monkeypatch.setattr(data_module, "photos_from_paths", no_reading)
    monkeypatch.setattr(data_module, "photos_from_database", no_reading)
    out, code, message = {
        "folder": (tmp_path, 2, "is a folder"),
        "suffix": (tmp_path / "model.pt", 2, "ending in .safetensors"),
        "missing folder": (tmp_path / "nope" / "m.safetensors", 1, "does not exist"),
        "read-only folder": (tmp_path / "ro" / "m.safetensors", 1, "is not writable"),
    }[kind]
    if kind == "read-only folder":
        if os.geteuid() == 0:
            pytest.skip("root writes anywhere")
        (tmp_path / "ro").mkdir(mode=0o555)
    result = run("finetune", lund_dir, "--out", out, *FAST)
    assert result.exit_code == code, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error:") and message in line and str(out) in line
    result = run("finetune", "--out", out, *FAST)  # from the default database: the same
    assert result.exit_code == code and message in result.stderr


def test_too_few_photos_says_what_the_data_needs(lund_dir, tmp_path):
    result = run("finetune", lund_dir / "01.jpg", lund_dir / "02.jpg", "--out", tmp_path / "m.safetensors", *FAST)
    assert result.exit_code == 1
    assert "only 2 GPS-tagged photo" in result.stderr and "within 10 m" in result.stderr
    assert "Traceback" not in result.output


def test_photos_far_apart_say_what_the_data_needs(exif_dir, tmp_path):
    far = [exif_dir / p for p in ("heic/IMG_5195.HEIC", "jpg/Kodak_CX7530.jpg",
                                  "jpg/mobile/HMD_Nokia_8.3_5G.jpg", "jpg/tests/67-0_length_string.jpg")]
    result = run("finetune", *far, "--out", tmp_path / "m.safetensors", *FAST)
    assert result.exit_code == 1
    assert "none of the 4 training photos has another photo within 10 m" in result.stderr
    assert not (tmp_path / "m.safetensors").exists()


def test_pca_larger_than_the_photos_allow_fails_before_training(lund_dir, tmp_path):
    out = tmp_path / "m.safetensors"
    result = run("finetune", lund_dir, "--out", out, "--pca", "4096", *FAST)
    assert result.exit_code == 1
    assert "--pca 4096 needs at least 4097 photos" in result.stderr
    assert "epoch" not in result.stderr  # no training was wasted
    assert not out.exists() and not any(tmp_path.iterdir())  # no checkpoint left to --resume


def test_default_base_offline_fails_with_one_line(lund_dir, tmp_path):
    result = run("finetune", lund_dir, "--out", tmp_path / "m.safetensors")
    assert result.exit_code == 1
    assert "netvlad-vgg16-pitts30k" in result.stderr and "offline" in result.stderr
    assert len(result.stderr.strip().splitlines()[-1]) > 0 and "Traceback" not in result.output


def test_fresh_vgg16_base_offline_fails_with_one_line(lund_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no ImageNet weights cached
    result = run("finetune", lund_dir, "--out", tmp_path / "m.safetensors", "--base", "vgg16")
    assert result.exit_code == 1
    assert "ImageNet weights of vgg16" in result.stderr and "Traceback" not in result.output


def test_empty_database_says_so(tmp_path):
    result = run("finetune", "--db", tmp_path / "nothing", "--out", tmp_path / "m.safetensors", *FAST)
    assert result.exit_code == 1
    assert "nothing" in result.stderr


@pytest.mark.parametrize("args, message", [
    ([], "--out FILE is required"),
    (["--out", "m.safetensors", "--train-layers", "everything"], "--train-layers"),
    (["--out", "m.safetensors", "--epochs", "0"], "--epochs"),
    (["--out", "m.safetensors", "--neg-radius", "5"], "--neg-radius"),
    (["--out", "m.safetensors", "--db", "x"], "not both"),
    (["--out", "m.safetensors", "--momentum", "1"], "--momentum"),
    (["--out", "m.safetensors", "--lr-gamma", "0"], "--lr-gamma"),
])
def test_usage_errors(lund_dir, args, message):
    result = run("finetune", lund_dir, *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_help_lists_the_paper_options():
    result = run("finetune", "--help")
    assert result.exit_code == 0
    for option in ("--resume", "--pca", "--train-layers", "--margin", "--cache-refresh", "--val-fraction",
                   "--momentum", "--lr-gamma"):
        assert option in result.stdout


def test_cli_defaults_are_the_config_defaults():
    """Every training default the issue lists is overridable, and the command line's default is
    the library's (a drift between the two would make the docs wrong for one of them)."""
    import typer.main

    from geoloc.training.finetune import FinetuneConfig

    params = {p.name: p.default for p in typer.main.get_command(app).commands["finetune"].params}
    config = FinetuneConfig()
    pairs = {
        "base": "base", "epochs": "epochs", "train_layers": "train_layers", "margin": "margin", "lr": "lr",
        "momentum": "momentum", "weight_decay": "weight_decay", "lr_step": "lr_step", "lr_gamma": "lr_gamma",
        "batch_size": "batch_size", "negatives": "n_neg", "neg_sample": "neg_sample",
        "cache_refresh": "cache_refresh", "num_clusters": "num_clusters", "pos_radius": "pos_radius_m",
        "neg_radius": "neg_radius_m", "val_fraction": "val_fraction", "val_cell": "val_cell_m",
        "patience": "patience", "seed": "seed",
    }
    for option, field in pairs.items():
        assert params[option] == getattr(config, field), option


@pytest.mark.slow
def test_ctrl_c_in_a_real_process_saves_and_resume_continues(lund_dir, tmp_path):
    """SIGINT to a running `geoloc finetune` process, as a terminal sends it: the run saves a
    checkpoint mid-training, exits 130 with one line saying how to continue, and `--resume`
    carries on from that checkpoint to a model file."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    out = tmp_path / "walk.safetensors"
    tiny = ["--base", "lite0-vlad", "--max-side", "96", "--negatives", "5", "--workers", "1", "--batch-size", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "geoloc", "finetune", str(lund_dir), "--out", str(out), "--epochs", "50", *tiny],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )
    try:
        seen = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            text = proc.stderr.readline()
            if not text:
                break
            seen.append(text)
            if text.strip().startswith("start"):  # epoch 0 measured: training is under way
                break
        assert any(t.strip().startswith("start") for t in seen), "".join(seen)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = "".join(seen) + rest
    assert proc.returncode == 130, stderr
    assert "checkpoint saved to" in stderr and "--resume" in stderr and "Traceback" not in stderr
    last = out.parent / f"{out.name}.ckpt" / "last.pt"
    assert last.is_file() and not out.exists()
    saved = torch.load(last, weights_only=True)
    assert saved["epoch"] < 50

    resumed = data(run("finetune", lund_dir, "--out", out, "--epochs", str(saved["epoch"] + 1), *tiny,
                       "--resume", "--json"))
    assert resumed["resumed"] and resumed["epochs_run"] == saved["epoch"] + 1
    assert [h["epoch"] for h in resumed["history"]] == list(range(saved["epoch"] + 2))
    assert out.is_file() and not last.parent.exists()
