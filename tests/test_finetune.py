"""Unit tests of the training pieces: tuples, split, mining, loss, PCA, recall, and the loop
(with exact resume and Ctrl-C) on a tiny network over the real Lund photos at 64 px."""

from __future__ import annotations

import csv
import os
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from geoloc.geo import to_local_m
from geoloc.training import checkpoint
from geoloc.training.loss import triplet_ranking_loss
from geoloc.training.mining import DescriptorCache, HardNegativeMiner
from geoloc.training.pca import fit_pca_whitening
from geoloc.training.tuples import TrainingDataError, build_tuples, require_trainable, split_by_place
from geoloc.training.validate import recall_at_n, recall_score, triplet_objective


def line(xs):
    """Photos along the x axis at the given metres."""
    return np.array([[x, 0.0] for x in xs], dtype=float)


# ---------------------------------------------------------------------------------------- tuples


def test_tuples_follow_the_paper_radii():
    pos = line([0, 4, 9, 17, 30, 60])
    t = build_tuples(pos, pos_radius_m=10, neg_radius_m=25)
    by_query = {int(q): k for k, q in enumerate(t.queries)}
    # 0 m: positives within 10 m are 4 m and 9 m; 17 m is neither positive nor negative.
    k = by_query[0]
    assert t.positives[k].tolist() == [1, 2]
    assert t.negatives(k).tolist() == [4, 5]
    assert 3 in t.non_negatives[k] and 0 in t.non_negatives[k]
    # 30 m and 60 m have nobody within 10 m: they cannot be queries.
    assert 4 not in by_query and 5 not in by_query


def test_no_nearby_pair_says_what_the_data_needs():
    t = build_tuples(line([0, 100, 200, 300]))
    assert len(t.queries) == 0
    with pytest.raises(TrainingDataError, match="within 10 m"):
        require_trainable(t, 4, 10, 25)
    with pytest.raises(TrainingDataError, match="only 2 photo"):
        require_trainable(t, 2, 10, 25)


def lund_positions(data_dir) -> tuple[list[Path], np.ndarray]:
    rows = list(csv.DictReader(open(data_dir / "lund" / "gps_from_exif.csv")))
    paths = [data_dir / "lund" / "images" / r["filename"] for r in rows]
    lat = np.array([float(r["lat"]) for r in rows])
    lon = np.array([float(r["lon"]) for r in rows])
    return paths, to_local_m(lat, lon, lat.mean(), lon.mean())


def test_split_holds_out_whole_cells(data_dir):
    _, pos = lund_positions(data_dir)
    split = split_by_place(pos, val_fraction=0.15, cell_m=50, seed=0)
    assert len(split.val) > 0 and len(split.train) > 0
    assert sorted(np.concatenate([split.train, split.val]).tolist()) == list(range(len(pos)))
    cell = lambda i: tuple(np.floor(pos[i] / 50).astype(int))  # noqa: E731
    assert not {cell(i) for i in split.val} & {cell(i) for i in split.train}
    again = split_by_place(pos, val_fraction=0.15, cell_m=50, seed=0)
    assert again.val.tolist() == split.val.tolist()
    assert len(split_by_place(pos, val_fraction=0.0).val) == 0


def test_split_never_holds_out_everything():
    split = split_by_place(line([0, 1, 2]), val_fraction=0.9, cell_m=50)
    assert len(split.train) == 3 and len(split.val) == 0


# ---------------------------------------------------------------------------------------- loss


def test_triplet_loss_uses_squared_distances_and_sums_negatives():
    q = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[0.8, 0.6]])          # d² = 0.04 + 0.36 = 0.4
    n = torch.tensor([[[0.6, 0.8], [-1.0, 0.0], [1.0, 0.1]]])  # d² = 0.8, 4.0, 0.01
    loss = triplet_ranking_loss(q, p, n, margin=0.1)
    # max(0, 0.1 + 0.4 - 0.8) + max(0, 0.5 - 4) + max(0, 0.5 - 0.01)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(0.49, abs=1e-6)
    masked = triplet_ranking_loss(q, p, n, margin=0.1, mask=torch.tensor([[True, True, False]]))
    assert masked.item() == pytest.approx(0.0, abs=1e-6)


def test_triplet_loss_has_gradients():
    q = torch.randn(2, 8, requires_grad=True)
    loss = triplet_ranking_loss(q, torch.randn(2, 8), torch.randn(2, 3, 8), margin=10.0).sum()
    loss.backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


# ---------------------------------------------------------------------------------------- mining


def _cache(desc: np.ndarray) -> DescriptorCache:
    cache = DescriptorCache(*desc.shape)
    cache.update(torch.as_tensor(desc, dtype=torch.float32))
    return cache


def test_miner_picks_best_positive_and_hardest_negatives():
    pos = line([0, 5, 8, 100, 200, 300, 400])
    t = build_tuples(pos)
    k = int(np.flatnonzero(t.queries == 0)[0])
    # Descriptors: photo 2 looks more like the query than photo 1; photo 5 is a confusing negative.
    desc = np.array([[1, 0], [0, 1], [0.9, 0.1], [-1, 0], [0, -1], [0.95, 0.05], [-0.7, -0.7]], dtype=float)
    miner = HardNegativeMiner(t, n_neg=2, neg_sample=1000, margin=0.1, seed=0)
    tup = miner.mine(k, _cache(desc))
    assert tup is not None
    assert tup.positive == 2
    assert tup.negatives[0] == 5
    assert set(tup.negatives.tolist()) <= set(t.negatives(k).tolist())


def test_miner_carries_the_previous_hardest_negatives():
    # 1 query with 1 positive and 200 negatives; sampling 5 of them would usually miss #150.
    pos = np.concatenate([line([0, 3]), np.array([[1000.0 + i, 0.0] for i in range(200)])])
    t = build_tuples(pos)
    k = int(np.flatnonzero(t.queries == 0)[0])
    rng = np.random.default_rng(0)
    desc = rng.normal(size=(len(pos), 16)) * 10
    desc[1] = desc[0] + 0.01
    desc[2 + 150] = desc[0] + 0.001  # the hardest negative of all
    miner = HardNegativeMiner(t, n_neg=3, neg_sample=5, margin=0.1, seed=1)
    cache = _cache(desc)
    miner.previous[k, 0] = 2 + 150  # found on an earlier pass
    tup = miner.mine(k, cache)
    assert tup is not None and tup.negatives[0] == 152
    assert miner.previous[k, 0] == 152  # and kept for the next pass


def test_miner_skips_queries_without_a_violating_negative():
    pos = line([0, 5, 100, 200])
    t = build_tuples(pos)
    desc = np.array([[1, 0], [1, 0], [-1, 0], [0, -1]], dtype=float)
    miner = HardNegativeMiner(t, n_neg=2, neg_sample=10, margin=0.1)
    assert miner.mine(int(np.flatnonzero(t.queries == 0)[0]), _cache(desc)) is None


def test_miner_state_round_trips(tmp_path):
    t = build_tuples(line([0, 5, 100, 105, 200, 205]))
    a = HardNegativeMiner(t, n_neg=2, neg_sample=2, seed=3)
    cache = _cache(np.random.default_rng(0).normal(size=(6, 4)))
    for k in range(len(t.queries)):
        a.mine(k, cache)
    checkpoint.save(tmp_path / "m.pt", {"format": checkpoint.FORMAT, "miner": a.state_dict()})
    b = HardNegativeMiner(t, n_neg=2, neg_sample=2, seed=99)
    b.load_state_dict(checkpoint.load(tmp_path / "m.pt")["miner"])
    assert (a.previous == b.previous).all()
    assert a.rng.random() == b.rng.random()


# ---------------------------------------------------------------------------------------- recall


def test_recall_is_leave_one_out_at_the_threshold():
    pos = line([0, 10, 500, 510, 2000])
    desc = torch.nn.functional.normalize(torch.tensor(
        [[1, 0, 0], [0.99, 0.1, 0], [0.6, 0, 0.8], [0, 1, 0.3], [0, 0, -1]], dtype=torch.float32), dim=1)
    recall, counted = recall_at_n(desc, pos, [0, 2, 4], threshold_m=25, ns=(1, 3))
    # 0's best match is 1 (10 m away: right). 2 matches 0 and 1 (500 m: wrong) before 3 (10 m).
    # 4 has no photo within 25 m, so no answer could be right: it is not counted.
    assert counted == 2
    assert recall == {"1": 0.5, "3": 1.0}
    assert recall_score({"1": 0.5, "5": 1.0, "10": 1.0}) == pytest.approx(2.5 / 3)


def test_objective_is_zero_when_every_tuple_is_separated():
    pos = line([0, 5, 100, 105])
    t = build_tuples(pos)
    good = torch.tensor([[1, 0], [1, 0], [-1, 0], [-1, 0]], dtype=torch.float32)
    bad = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=torch.float32)
    assert triplet_objective(good, t, margin=0.1, n_neg=2) == 0.0
    assert triplet_objective(bad, t, margin=0.1, n_neg=2) > 1.0


# ---------------------------------------------------------------------------------------- PCA


def _low_rank(n=120, d=400, r=12, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, r)) * np.linspace(8, 1, r)) @ rng.standard_normal((r, d))
    return (x + 0.01 * rng.standard_normal((n, d)) + 2.0).astype(np.float32)


@pytest.mark.parametrize("method", ["gram", "randomized"])
def test_streaming_pca_matches_the_exact_solution(method, tmp_path):
    x = _low_rank()
    mm = np.memmap(tmp_path / "x.f32", dtype=np.float32, mode="w+", shape=x.shape)
    mm[:] = x
    mm.flush()
    pca = fit_pca_whitening(mm, 8, method=method, chunk_bytes=40 * 400 * 8)  # 40-row chunks
    xc = x.astype(np.float64) - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    cos = np.abs((pca.components * vt[:8]).sum(1))
    assert cos.min() > 0.999
    assert np.allclose(pca.eigenvalues, s[:8] ** 2 / len(x), rtol=1e-3)
    y = pca.transform(x, normalize=False)
    assert np.allclose(np.cov(y.T, bias=True), np.eye(8), atol=1e-2)


def test_pca_needs_more_photos_than_dimensions():
    from geoloc.errors import GeolocError

    with pytest.raises(GeolocError, match="needs at least 31 photos"):
        fit_pca_whitening(np.zeros((29, 100), dtype=np.float32), 30)


# ---------------------------------------------------------------------------------------- the loop


class TinyNet(torch.nn.Module):
    """Two convolutions and average pooling: enough to train, fast on two cores."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.c1 = torch.nn.Conv2d(3, 8, 5, stride=4)
        self.c2 = torch.nn.Conv2d(8, 16, 3, stride=2)
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        self.dim = 16

    def forward(self, x):
        x = self.c2(torch.relu(self.c1(x)))
        return torch.nn.functional.normalize(x.mean((2, 3)), dim=1)


@pytest.fixture(scope="module")
def lund_setup(data_dir):
    paths, pos = lund_positions(data_dir)
    split = split_by_place(pos, val_fraction=0.15, cell_m=50, seed=0)
    tuples = build_tuples(pos[split.train])
    return paths, pos, split, tuples


def make_trainer(lund_setup, ckpt, epochs=2, on_step=None):
    from geoloc.models.preprocess import IMAGENET
    from geoloc.training.images import ImageSet
    from geoloc.training.loop import Trainer, TrainSettings

    paths, pos, split, tuples = lund_setup
    images = ImageSet(paths, IMAGENET.replace(max_side=64), workers=2)
    settings = TrainSettings(epochs=epochs, lr=0.01, n_neg=3, batch_size=2, cache_refresh=6)
    model = TinyNet()
    trainer = Trainer(model, images, pos, split, tuples, settings, torch.device("cpu"), ckpt,
                      fingerprint="lund-tiny", on_step=on_step)
    return trainer, model, images


@pytest.mark.slow
def test_loop_trains_refreshes_the_cache_and_checkpoints(lund_setup, tmp_path):
    from geoloc.training.images import compute_descriptors

    trainer, model, images = make_trainer(lund_setup, tmp_path)
    with images:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        result = trainer.run(validated=True)
        assert [h.epoch for h in result.history] == [0, 1, 2]
        assert result.history[0].recall is not None and result.history[-1].trained > 0
        assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        # The main-process cache holds the descriptors of the model as it is now.
        now = compute_descriptors(model, images, trainer.train_idx.tolist(), torch.device("cpu"))
        assert torch.allclose(trainer.cache.descriptors, now, atol=1e-5)
    assert (tmp_path / checkpoint.LAST).is_file() and (tmp_path / checkpoint.BEST).is_file()
    state = checkpoint.load(tmp_path / checkpoint.LAST)
    assert state["epoch"] == 2 and state["cache"]["valid"]


@pytest.mark.slow
def test_resume_mid_epoch_continues_exactly(lund_setup, tmp_path):
    straight, model_a, images_a = make_trainer(lund_setup, tmp_path / "a")
    with images_a:
        straight.run(validated=True)

    calls = []

    def stop_in_epoch_two(trainer):
        calls.append(trainer.epoch)
        if calls.count(1) == 2:  # two steps into epoch 2
            trainer.request_stop()

    first, _, images_b = make_trainer(lund_setup, tmp_path / "b", on_step=stop_in_epoch_two)
    with images_b, pytest.raises(KeyboardInterrupt):
        first.run(validated=True)
    saved = checkpoint.load(tmp_path / "b" / checkpoint.LAST)
    assert saved["epoch"] == 1 and saved["order"] is not None and saved["step"] == 4

    second, model_b, images_c = make_trainer(lund_setup, tmp_path / "b")
    with images_c:
        second.resume()
        result = second.run(validated=True)
    assert result.epochs_run == 2
    for key, value in model_a.state_dict().items():
        assert torch.equal(value, model_b.state_dict()[key]), key


def test_ctrl_c_saves_a_checkpoint_before_exiting(lund_setup, tmp_path):
    def press_ctrl_c(trainer):
        os.kill(os.getpid(), signal.SIGINT)

    trainer, _, images = make_trainer(lund_setup, tmp_path, epochs=1, on_step=press_ctrl_c)
    with images, pytest.raises(KeyboardInterrupt):
        trainer.run(validated=True)
    state = checkpoint.load(tmp_path / checkpoint.LAST)
    assert state["step"] == 2  # stopped after the step during which Ctrl-C came
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_resume_refuses_another_runs_checkpoint(lund_setup, tmp_path):
    trainer, _, images = make_trainer(lund_setup, tmp_path, epochs=1)
    with images:
        trainer.run(validated=False)
        other, _, images2 = make_trainer(lund_setup, tmp_path, epochs=1)
        other.fingerprint = "something else"
        with images2, pytest.raises(checkpoint.CheckpointError, match="other photos or settings"):
            other.resume()


# ---------------------------------------------------------------------------------------- planning


def _photos_at(points_m, tmp_path=None):
    from geoloc.training.data import TrainingPhoto
    from geoloc.geo import from_local_m

    photos = []
    for i, (east, north) in enumerate(points_m):
        lat, lon = from_local_m(east, north, 55.7, 13.19)
        photos.append(TrainingPhoto(Path(f"/photos/{i:03d}.jpg"), lat, lon))
    return photos


def test_plan_validates_on_held_out_areas(data_dir):
    from geoloc.training.data import TrainingPhoto
    from geoloc.training.finetune import FinetuneConfig, plan_training

    rows = list(csv.DictReader(open(data_dir / "lund" / "gps_from_exif.csv")))
    photos = [TrainingPhoto(Path(r["filename"]), float(r["lat"]), float(r["lon"])) for r in rows]
    _, split, tuples, val_queries = plan_training(photos, FinetuneConfig())
    assert len(split.val) == val_queries > 0
    assert len(tuples.queries) > 0 and tuples.n_photos == len(split.train)


def test_plan_trains_on_everything_when_nothing_can_be_scored():
    from geoloc.training.finetune import FinetuneConfig, plan_training

    # Pairs 5 m apart, every pair in its own 50 m cell, plus one lone photo far away: holding a
    # cell out either takes a pair from training or leaves a photo with nobody within 25 m.
    points = [(0, 0), (5, 0), (200, 0), (205, 0), (400, 0), (405, 0), (1000, 1000)]
    config = FinetuneConfig(val_fraction=0.15, seed=3)  # this seed draws the lone photo's cell
    assert split_by_place(np.array(points, float), 0.15, 50, seed=3).val.tolist() == [6]
    _, split, tuples, val_queries = plan_training(_photos_at(points), config)
    assert len(split.val) == 0 and val_queries == 0 and len(split.train) == 7
    assert len(tuples.queries) == 6


def test_plan_says_what_the_data_needs():
    from geoloc.training.finetune import FinetuneConfig, plan_training

    with pytest.raises(TrainingDataError, match="within 10 m"):
        plan_training(_photos_at([(0, 0), (100, 0), (200, 0), (300, 0)]), FinetuneConfig())
    with pytest.raises(TrainingDataError, match="only 2"):
        plan_training(_photos_at([(0, 0), (5, 0)]), FinetuneConfig())


def test_photos_from_database_keeps_located_photos_on_disk(tmp_path, lund_dir):
    from geoloc.database import Database, PhotoRecord
    from geoloc.training.data import photos_from_database

    records = [
        PhotoRecord(path=lund_dir / "01.jpg", size=1, mtime_ns=1, lat=55.69816, lon=13.19538),
        PhotoRecord(path=lund_dir / "02.jpg", size=1, mtime_ns=1),  # no position
        PhotoRecord(path=tmp_path / "gone.jpg", size=1, mtime_ns=1, lat=55.7, lon=13.2),
    ]
    with Database.create(tmp_path / "db", {"model": "test", "dim": 4}) as db:
        db.add_batch(records, np.zeros((3, 4), dtype=np.float32))
    errors = []
    photos, unlocated = photos_from_database(tmp_path / "db", errors.append)
    assert [p.path.name for p in photos] == ["01.jpg"] and unlocated == 1
    assert len(errors) == 1 and "no longer on disk" in str(errors[0])


# ---------------------------------------------------------------------------------------- defaults


def test_defaults_are_the_papers_and_reach_the_optimizer(lund_setup, tmp_path):
    """The issue's recipe, checked where it acts (the optimizer, the schedule, the miner), not
    only in the config: 10 m / 25 m, 1000 sampled and 10 kept negatives, a cache refreshed every
    1000 queries, margin 0.1, SGD 1e-4 / 0.9 / 1e-3, the rate halved every 5 epochs."""
    from geoloc.training.finetune import FinetuneConfig
    from geoloc.models.preprocess import IMAGENET
    from geoloc.training.images import ImageSet
    from geoloc.training.loop import Trainer

    config = FinetuneConfig()
    assert (config.pos_radius_m, config.neg_radius_m) == (10.0, 25.0)
    assert config.train_layers == "last_block" and config.threshold_m == 25.0
    settings = config.train_settings()
    assert (settings.neg_sample, settings.n_neg, settings.cache_refresh, settings.margin) == (1000, 10, 1000, 0.1)

    paths, pos, split, tuples = lund_setup
    with ImageSet(paths, IMAGENET.replace(max_side=64), workers=1) as images:
        trainer = Trainer(TinyNet(), images, pos, split, tuples, settings, torch.device("cpu"), tmp_path)
        group = trainer.optimizer.param_groups[0]
        assert isinstance(trainer.optimizer, torch.optim.SGD)
        assert (group["lr"], group["momentum"], group["weight_decay"]) == (1e-4, 0.9, 1e-3)
        rates = []
        with warnings.catch_warnings():  # stepping the schedule alone, without training
            warnings.simplefilter("ignore")
            for _ in range(11):
                rates.append(trainer.optimizer.param_groups[0]["lr"])
                trainer.scheduler.step()
        assert rates[0] == rates[4] == 1e-4 and rates[5] == 5e-5 and rates[10] == 2.5e-5
        assert (trainer.miner.neg_sample, trainer.miner.n_neg, trainer.miner.margin) == (1000, 10, 0.1)


def test_a_whitened_base_keeps_its_whitening_frozen(tmp_path):
    """finetune --pca refits whitening; training itself must not move it (docs/finetune.md)."""
    from geoloc.training.finetune import FinetuneConfig, build_base
    from geoloc.models.model import build_model
    from geoloc.models.modelfile import save_model_file

    base = build_model("lite0", "netvlad", num_clusters=4, whiten_dim=8, pretrained_backbone=False)
    base.pool.fitted.fill_(True)
    save_model_file(base, tmp_path / "whitened.safetensors", {"base": "test"})
    model = build_base(FinetuneConfig(base=str(tmp_path / "whitened.safetensors")))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert model.whiten is not None and not any(n.startswith("whiten") for n in trainable)
    assert {"pool.centroids", "pool.conv.weight"} <= trainable
    assert any(n.startswith("backbone.net._blocks.15.") for n in trainable)
