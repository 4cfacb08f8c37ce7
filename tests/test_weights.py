"""Published weights: real-layout checkpoints (random tensors, real shapes and dtypes) loaded
through a seeded Hugging Face cache with HF_HUB_OFFLINE=1, the MATLAB struct layout, the
geoloc model-file format, and the errors a user can meet."""

from __future__ import annotations

import gc
import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hub_fixtures import (
    PATCH_NETVLAD_REPO,
    random_netvlad_weights,
    seed_hf_cache,
    write_hloc_mat,
    write_pth_tar,
)
from PIL import Image

from geoloc.errors import ModelError, UsageError, WeightsUnavailableError
from geoloc.models import (
    build_model,
    download_model,
    get_entry,
    is_cached,
    load_model,
    pick_device,
)
from geoloc.models.modelfile import load_model_file, read_model_metadata, save_model_file
from geoloc.models.preprocess import IMAGENET
from geoloc.models.registry import WeightsSource
from geoloc.models.weights import hub_download

VGG_POOL_AFTER = {2, 7, 14, 21}  # torchvision indices of the convs followed by a max-pool (after ReLU)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _photos(lund_dir: Path, preprocess, n: int = 2, max_side: int = 128) -> torch.Tensor:
    pre = preprocess.replace(max_side=max_side)
    return torch.stack([pre.to_tensor(Image.open(lund_dir / f"{i:02d}.jpg")) for i in range(1, n + 1)])


@pytest.fixture(scope="session")
def hub4096(tmp_path_factory):
    """pitts_WPCA4096.pth.tar (WPCA float64, 1.1 GB as the real file) and Pitts30K_struct.mat
    from the same weights, written once per session; the .pth.tar is seeded in a HF cache."""
    root = tmp_path_factory.mktemp("hub4096")
    weights = random_netvlad_weights(whiten_dim=4096, seed=0)
    pth = write_pth_tar(root / "pitts_WPCA4096.pth.tar", weights)
    mat = write_hloc_mat(root / "Pitts30K_struct.mat", weights)
    del weights
    gc.collect()
    cache = seed_hf_cache(root / "hub", PATCH_NETVLAD_REPO, {"pitts_WPCA4096.pth.tar": pth}, move=True)
    return {"cache": cache, "mat": mat}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The same layouts whitened to 128-D: cheap enough for the detailed checks."""
    root = tmp_path_factory.mktemp("hub128")
    weights = random_netvlad_weights(whiten_dim=128, seed=1)
    pth = write_pth_tar(root / "pitts_WPCA128.pth.tar", weights)
    mat = write_hloc_mat(root / "Pitts30K_struct.mat", weights)
    cache = seed_hf_cache(root / "hub", PATCH_NETVLAD_REPO, {"pitts_WPCA128.pth.tar": pth})
    return {"cache": cache, "mat": mat, "pth": pth, "weights": weights}


# ------------------------------------------------------------------------------ the tests


@pytest.mark.slow
def test_4096d_default_model_from_the_hub_cache_and_the_same_weights_as_mat(hub4096, lund_dir, monkeypatch):
    """One test, so the 1 GB checkpoint is converted once: the default model loads offline from
    the seeded Hugging Face cache and gives 4096-D unit descriptors; the MATLAB struct holding
    the same weights gives the same descriptors to 1e-5."""
    monkeypatch.setenv("HF_HUB_CACHE", str(hub4096["cache"]))
    entry = get_entry("netvlad-vgg16-pitts30k")
    assert entry.default and is_cached(entry)
    model = load_model("netvlad-vgg16-pitts30k")
    assert model.name == "netvlad-vgg16-pitts30k" and model.dim == 4096
    assert model.preprocess == IMAGENET and not model.needs_vocabulary
    x = _photos(lund_dir, model.preprocess)
    with torch.no_grad():
        desc = model(x)
    assert desc.shape == (2, 4096) and desc.dtype == torch.float32
    assert torch.allclose(desc.norm(dim=1), torch.ones(2), atol=1e-5)
    converted = download_model("netvlad-vgg16-pitts30k")
    assert converted.suffix == ".safetensors" and converted.is_relative_to(Path(os.environ["GEOLOC_HOME"]))
    assert model.weights_hash == _sha256(converted)
    meta = read_model_metadata(converted)
    assert meta["arch"] == "vgg16" and meta["whiten_dim"] == "4096" and meta["num_clusters"] == "64"
    assert meta["source"].startswith("hf://TobiasRobotics/Patch-NetVLAD/pitts_WPCA4096.pth.tar")
    del model
    gc.collect()

    from_mat = load_model(hub4096["mat"])
    assert from_mat.dim == 4096 and from_mat.name == str(hub4096["mat"])
    with torch.no_grad():
        from_mat_desc = from_mat(x)  # the same network input: only the weights' layouts differ
    assert torch.allclose(desc, from_mat_desc, atol=1e-5), (desc - from_mat_desc).abs().max()
    assert from_mat.preprocess.scale == 255.0 and from_mat.preprocess.std == (1.0, 1.0, 1.0)
    assert from_mat.preprocess.mean == pytest.approx((122.7, 114.9, 101.6), abs=1e-4)


# --------------------------------------------------------------- the layouts, checked independently


def _vgg_conv5_3(x: torch.Tensor, convs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    indices = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    for n, (idx, (w, b)) in enumerate(zip(indices, convs)):
        x = F.conv2d(x, w, b, padding=1)
        if n < 12:
            x = F.relu(x)
        if idx in VGG_POOL_AFTER:
            x = F.max_pool2d(x, 2, 2)
    return x


def test_mat_follows_hloc_semantics(small, lund_dir):
    """A straight reading of the MATLAB struct, the way hloc documents it, against our loader."""
    import scipy.io

    net = scipy.io.loadmat(str(small["mat"]), struct_as_record=False, squeeze_me=True)["net"]
    layers = list(net.layers)
    convs = [
        (torch.from_numpy(l.weights[0]).float().permute(3, 2, 0, 1), torch.from_numpy(l.weights[1]).float())
        for l in layers[:29]
        if l.type == "conv"
    ]
    model = load_model(small["mat"])
    x = _photos(lund_dir, model.preprocess)
    raw = torch.stack(
        [
            torch.from_numpy(
                np.asarray(
                    model.preprocess.replace(max_side=128).resize(Image.open(lund_dir / f"{i:02d}.jpg")),
                    dtype=np.float32,
                )
            ).permute(2, 0, 1)
            for i in (1, 2)
        ]
    )
    average = torch.tensor(net.meta.normalization.averageImage, dtype=torch.float32).reshape(3, 1, 1)
    assert torch.allclose(x, raw - average, atol=1e-4)  # input: RGB 0–255 minus the average image
    with torch.no_grad():
        feats = _vgg_conv5_3(x, convs)
        desc = F.normalize(feats.flatten(2), dim=1)  # B×D×N
        vlad_core = layers[30]
        assert vlad_core.name == "vlad_core"
        assign_w = torch.from_numpy(vlad_core.weights[0]).float()  # D×K
        centres = -torch.from_numpy(vlad_core.weights[1]).float()  # D×K
        scores = torch.softmax(torch.einsum("dk,bdn->bkn", assign_w, desc), dim=1)
        vlad = torch.einsum("bkn,bdn->bdk", scores, desc) - scores.sum(-1)[:, None, :] * centres[None]
        vlad = F.normalize(vlad, dim=1).reshape(len(x), -1)  # intra-norm, flattened d·K + k
        vlad = F.normalize(vlad, dim=1)
        wpca = layers[33]
        assert wpca.name == "WPCA"
        ref = F.normalize(
            vlad @ torch.from_numpy(wpca.weights[0]).float() + torch.from_numpy(wpca.weights[1]).float(), dim=1
        )
        ours = model(x)
    assert ours.shape == (2, 128)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()


def test_pth_tar_follows_patch_netvlad_semantics(small, lund_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(small["cache"]))
    model = load_model("netvlad-vgg16-pitts30k-128")
    sd = torch.load(small["pth"], map_location="cpu", weights_only=True)["state_dict"]
    x = _photos(lund_dir, model.preprocess)
    indices = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    convs = [(sd[f"encoder.{i}.weight"], sd[f"encoder.{i}.bias"]) for i in indices]
    with torch.no_grad():
        feats = F.normalize(_vgg_conv5_3(x, convs), dim=1)
        soft = torch.softmax(F.conv2d(feats, sd["pool.conv.weight"]).flatten(2), dim=1)  # B×K×N
        flat = feats.flatten(2)
        blocks = []
        for k in range(64):  # per cluster, as the reference PyTorch code
            residual = flat - sd["pool.centroids"][k][None, :, None]
            blocks.append((residual * soft[:, k][:, None, :]).sum(-1))
        vlad = F.normalize(torch.stack(blocks, 1), dim=2).flatten(1)
        vlad = F.normalize(vlad, dim=1)
        w, b = sd["WPCA.0.weight"].float(), sd["WPCA.0.bias"].float()
        ref = F.normalize(F.conv2d(vlad[:, :, None, None], w, b).flatten(1), dim=1)
        ours = model(x)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()


# ----------------------------------------------------------------------- cache, download, offline


def test_conversion_happens_once_and_then_needs_no_hub(small, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(small["cache"]))
    first = download_model("netvlad-vgg16-pitts30k-128")
    stamp = first.stat().st_mtime_ns
    monkeypatch.setenv("HF_HUB_CACHE", str(first.parent / "empty-hub"))  # the raw download is gone
    assert is_cached(get_entry("netvlad-vgg16-pitts30k-128"))
    assert download_model("netvlad-vgg16-pitts30k-128") == first and first.stat().st_mtime_ns == stamp
    assert load_model("netvlad-vgg16-pitts30k-128").dim == 128


def test_offline_without_weights_is_one_line_naming_the_fix():
    entry = get_entry("netvlad-vgg16-pitts30k")
    assert not is_cached(entry)
    with pytest.raises(WeightsUnavailableError) as info:
        load_model("netvlad-vgg16-pitts30k")
    message = str(info.value)
    assert "\n" not in message
    assert "geoloc models download netvlad-vgg16-pitts30k" in message
    assert "lite0-vlad" in message and "offline" in message
    assert "HF_HUB_OFFLINE" in message and "`--model lite0-vlad`" in message  # why, and the option to type


def test_a_pinned_checksum_is_verified(small, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(small["cache"]))
    good = _sha256(small["pth"])
    path = hub_download(WeightsSource(PATCH_NETVLAD_REPO, "pitts_WPCA128.pth.tar", None, good), unavailable="x")
    assert _sha256(path) == good
    with pytest.raises(ModelError, match="does not match the pinned"):
        hub_download(WeightsSource(PATCH_NETVLAD_REPO, "pitts_WPCA128.pth.tar", None, "0" * 64), unavailable="x")


def test_a_checkpoint_given_by_path_is_converted_once_by_content_hash(small):
    a = load_model(small["pth"])
    converted = sorted((Path(os.environ["GEOLOC_HOME"]) / "weights" / "converted").glob("*.safetensors"))
    assert len(converted) == 1
    b = load_model(str(small["pth"]))
    assert a.weights_hash == b.weights_hash == _sha256(converted[0])
    assert len(list(converted[0].parent.glob("*.safetensors"))) == 1


# -------------------------------------------------------------------------- the model-file format


def test_lite0_vlad_needs_a_vocabulary_and_round_trips_through_a_model_file(tmp_path, lund_dir):
    model = load_model("lite0-vlad")
    assert model.needs_vocabulary and not model.has_vocabulary and model.dim == 64 * 320
    x = _photos(lund_dir, model.preprocess, n=2, max_side=256)
    with pytest.raises(ModelError, match="vocabulary"):
        model(x)
    with torch.no_grad():
        feats = model.local_features(x)
        assert feats.shape[1] == 320
        model.fit_vocabulary(feats.permute(0, 2, 3, 1).reshape(-1, 320))
        before = model(x)
    assert torch.allclose(before.norm(dim=1), torch.ones(2), atol=1e-5)

    other = load_model("lite0-vlad")
    assert other.weights_hash == model.weights_hash  # the vocabulary lives with the database
    other.load_vocabulary(model.vocabulary_state())
    assert other.vocabulary_hash() == model.vocabulary_hash()
    with torch.no_grad():
        assert torch.allclose(other(x), before, atol=1e-6)
    with pytest.raises(ModelError, match="do not fit"):
        other.load_vocabulary({"centroids": torch.zeros(8, 320), "conv.weight": torch.zeros(8, 320, 1, 1)})

    path = save_model_file(model, tmp_path / "mine.safetensors", {"base": "lite0-vlad", "epochs": 3})
    meta = read_model_metadata(path)
    assert meta["arch"] == "lite0" and meta["pooling"] == "netvlad" and meta["vocabulary"] == "fitted"
    assert meta["epochs"] == "3" and meta["geoloc_format"] == "1"
    loaded = load_model(path)
    assert not loaded.needs_vocabulary and loaded.has_vocabulary and loaded.name == str(path)
    assert loaded.preprocess == model.preprocess and loaded.weights_hash == _sha256(path)
    with torch.no_grad():
        assert torch.allclose(loaded(x), before, atol=1e-6)


def test_build_model_and_save_model_file_for_finetuning(tmp_path):
    model = build_model(
        "vgg16", "netvlad", num_clusters=8, whiten_dim=16, pretrained_backbone=False, train_layers="last_layer"
    )
    assert model.needs_vocabulary and model.dim == 16 and model.local_dim == 512
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "backbone.28.weight",
        "backbone.28.bias",
        "pool.conv.weight",
        "pool.centroids",
    }  # the PCA whitening stays frozen: it is refitted (finetune --pca), not trained
    model.fit_vocabulary(torch.randn(100, 512))
    path = save_model_file(model, tmp_path / "ft.safetensors", {"base": "netvlad-vgg16-pitts30k"})
    loaded = load_model_file(path)
    assert loaded.dim == 16 and loaded.base == "netvlad-vgg16-pitts30k" and loaded.train_layers == "last_layer"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)
    gem = build_model("lite0", "gem", pretrained_backbone=False)
    assert not gem.needs_vocabulary and gem.dim == 320
    assert load_model(save_model_file(gem, tmp_path / "gem.safetensors")).pooling == "gem"


def test_bad_model_files_are_one_line_errors(tmp_path):
    with pytest.raises(ModelError, match="model file not found"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(ModelError, match="unknown model 'vgg-nothing'.*lite0-vlad"):
        load_model("vgg-nothing")
    junk = tmp_path / "junk.safetensors"
    junk.write_text("not a model")
    with pytest.raises(ModelError, match="junk.safetensors"):
        load_model(junk)
    photo = tmp_path / "IMG_0001.jpg"  # a photo given as --model: said so, not a torch.load code
    photo.write_bytes(b"\xff\xd8\xff\xe0 a photo")
    with pytest.raises(ModelError, match=r"IMG_0001.jpg: a photo, not a model file: .*\.safetensors"):
        load_model(photo)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ModelError, match="not a geoloc model file"):
        load_model(plain)
    text = tmp_path / "model.pth.tar"
    text.write_text("hello")
    with pytest.raises(ModelError, match="weights_only=True"):
        load_model(text)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pth.tar"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": Evil()}, f, protocol=2)
    with pytest.raises(ModelError, match="weights_only=True"):
        load_model(evil)
    folder = tmp_path / "dir.safetensors"
    folder.mkdir()
    with pytest.raises(ModelError, match="folder"):
        load_model(folder)


def test_pick_device():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="cuda"):
            pick_device("cuda")
    with pytest.raises(UsageError, match="unknown device"):
        pick_device("tpu")


# ------------------------------------------------------------------ a real download, from a local hub


class _FakeHub:
    """Serves files as the Hub's ``/{repo}/resolve/{revision}/{file}`` endpoint does (HEAD with
    commit, ETag and size headers; GET with the bytes), on localhost."""

    commit = "fedcba9876543210fedcba9876543210fedcba98"

    def __init__(self, files: dict[str, Path]):
        import http.server
        import threading

        hub = self
        self.files = files
        self.requests: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _head(self):
                hub.requests.append(f"{self.command} {self.path}")
                path = self.path.split("?")[0]
                for key, file in hub.files.items():
                    if path == f"/{PATCH_NETVLAD_REPO}/resolve/main/{key}":
                        data = file.read_bytes()
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(data)))
                        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                        self.send_header("X-Repo-Commit", hub.commit)
                        self.end_headers()
                        return data
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None

            def do_HEAD(self):
                self._head()

            def do_GET(self):
                data = self._head()
                if data is not None:
                    self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_download_through_huggingface_hub_converts_and_verifies(small, monkeypatch, capfd):
    hub = _FakeHub({"pitts_WPCA128.pth.tar": small["pth"]})
    try:
        import huggingface_hub.constants

        monkeypatch.delenv("HF_HUB_OFFLINE")
        # huggingface_hub snapshots HF_HUB_OFFLINE at import, which an earlier test may have done
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        path = download_model("netvlad-vgg16-pitts30k-128")
        assert any("resolve/main/pitts_WPCA128.pth.tar" in r for r in hub.requests)
        meta = read_model_metadata(path)
        assert meta["source_etag"] == _sha256(small["pth"]) and meta["whiten_dim"] == "128"
        assert load_model("netvlad-vgg16-pitts30k-128").dim == 128
        # a pinned checksum that does not match is refused
        with pytest.raises(ModelError, match="does not match the pinned"):
            hub_download(WeightsSource(PATCH_NETVLAD_REPO, "pitts_WPCA128.pth.tar", None, "f" * 64), unavailable="x")
        with pytest.raises(ModelError, match="not found on the Hugging Face Hub"):
            hub_download(WeightsSource(PATCH_NETVLAD_REPO, "pitts_WPCA999.pth.tar", None, None), unavailable="x")
    finally:
        hub.close()
    captured = capfd.readouterr()
    assert captured.out == ""  # progress never goes to stdout
    assert "pitts_WPCA128.pth.tar" in captured.err  # the Rich download bar names the file
