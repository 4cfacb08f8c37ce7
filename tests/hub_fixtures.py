"""Checkpoints in the exact layouts of the published NetVLAD weights, and a Hugging Face cache
seeded with them, so tests load through the real huggingface_hub code path offline.

The weights are random (real shapes and dtypes); a ``.pth.tar`` and a ``.mat`` written from the
same `NetVLADWeights` hold the same network, so they must give the same descriptors.

Typical use (see tests/test_weights.py)::

    weights = random_netvlad_weights(whiten_dim=4096)
    write_pth_tar(tmp / "pitts_WPCA4096.pth.tar", weights)
    write_hloc_mat(tmp / "Pitts30K_struct.mat", weights)
    cache = seed_hf_cache(tmp / "hub", PATCH_NETVLAD_REPO, {"pitts_WPCA4096.pth.tar": path})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

PATCH_NETVLAD_REPO = "TobiasRobotics/Patch-NetVLAD"
# A made-up commit id for the seeded cache (the tests' own; geoloc pins no revision).
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"

# torchvision VGG-16 `features` index, out, in of the 13 convolutions.
_VGG16_CONVS = (
    (0, 64, 3), (2, 64, 64), (5, 128, 64), (7, 128, 128), (10, 256, 128), (12, 256, 256),
    (14, 256, 256), (17, 512, 256), (19, 512, 512), (21, 512, 512), (24, 512, 512),
    (26, 512, 512), (28, 512, 512),
)  # fmt: skip
# MatConvNet layer names of VGG-16 up to conv5_3, in order.
_VGG16_MAT_LAYERS = [
    "conv1_1",
    "relu1_1",
    "conv1_2",
    "relu1_2",
    "pool1",
    "conv2_1",
    "relu2_1",
    "conv2_2",
    "relu2_2",
    "pool2",
    "conv3_1",
    "relu3_1",
    "conv3_2",
    "relu3_2",
    "conv3_3",
    "relu3_3",
    "pool3",
    "conv4_1",
    "relu4_1",
    "conv4_2",
    "relu4_2",
    "conv4_3",
    "relu4_3",
    "pool4",
    "conv5_1",
    "relu5_1",
    "conv5_2",
    "relu5_2",
    "conv5_3",
]


@dataclass
class NetVLADWeights:
    """One VGG-16 + NetVLAD (+ WPCA) network, in Patch-NetVLAD's state_dict naming."""

    state_dict: dict[str, torch.Tensor]
    num_clusters: int
    whiten_dim: int | None
    average_rgb: tuple[float, float, float] = (122.7, 114.9, 101.6)


def random_netvlad_weights(
    whiten_dim: int | None = 4096,
    num_clusters: int = 64,
    seed: int = 0,
    wpca_dtype: torch.dtype = torch.float64,
) -> NetVLADWeights:
    """Random weights with the real shapes and dtypes (the real WPCA weight is float64).

    Convolutions use He-scaled weights so activations stay finite through 13 layers; the
    assignment weights are α·(normalised centroids) with α = 30, as a k-means init would give.
    """
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for idx, out_c, in_c in _VGG16_CONVS:
        std = (2.0 / (in_c * 9)) ** 0.5
        state[f"encoder.{idx}.weight"] = torch.randn(out_c, in_c, 3, 3, generator=gen) * std
        state[f"encoder.{idx}.bias"] = torch.randn(out_c, generator=gen) * 0.01
    d = 512
    centroids = torch.randn(num_clusters, d, generator=gen)
    unit = torch.nn.functional.normalize(centroids, dim=1)
    state["pool.centroids"] = unit * 0.3 + 0.01 * torch.randn(num_clusters, d, generator=gen)
    state["pool.conv.weight"] = (30.0 * unit)[:, :, None, None].contiguous()
    if whiten_dim:
        n_in = num_clusters * d
        w = torch.randn(whiten_dim, n_in, 1, 1, generator=gen, dtype=torch.float32).to(wpca_dtype)
        w.mul_(1.0 / n_in**0.5)
        state["WPCA.0.weight"] = w
        state["WPCA.0.bias"] = (torch.randn(whiten_dim, generator=gen) * 0.01).to(wpca_dtype)
    return NetVLADWeights(state, num_clusters, whiten_dim)


def write_pth_tar(path: Path, weights: NetVLADWeights) -> Path:
    """A Patch-NetVLAD checkpoint: ``{"num_pcs", "state_dict"}`` saved by torch.save."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = (
        {"num_pcs": weights.whiten_dim, "state_dict": weights.state_dict}
        if weights.whiten_dim
        else {"state_dict": weights.state_dict}
    )
    torch.save(ckpt, path)
    return path


def _cell(*arrays) -> np.ndarray:
    cell = np.empty((1, len(arrays)), dtype=object)
    for i, a in enumerate(arrays):
        cell[0, i] = a
    return cell


def write_hloc_mat(path: Path, weights: NetVLADWeights) -> Path:
    """The MATLAB release as hloc reads it (``Pitts30K_struct.mat``), from the same weights.

    Layers: VGG-16 to conv5_3 (weights S×S×IN×OUT single), preL2, vlad_core (assignment D×K,
    negated centroids D×K), intra-norm, postL2, WPCA (1×1×K·D×OUT, input index d·K + k) and
    finalL2; ``meta.normalization.averageImage`` is 1×1×3.
    """
    import scipy.io

    state = weights.state_dict
    k, d = weights.num_clusters, 512
    layers = []
    conv_iter = iter(_VGG16_CONVS)
    for name in _VGG16_MAT_LAYERS:
        if name.startswith("conv"):
            idx, _, _ = next(conv_iter)
            w = state[f"encoder.{idx}.weight"].float().numpy().transpose(2, 3, 1, 0)  # S×S×IN×OUT
            b = state[f"encoder.{idx}.bias"].float().numpy()
            layers.append(
                {
                    "name": name,
                    "type": "conv",
                    "weights": _cell(np.ascontiguousarray(w), b[:, None]),
                    "stride": np.array([1.0, 1.0]),
                    "pad": np.array([1.0, 1.0, 1.0, 1.0]),
                }
            )
        elif name.startswith("relu"):
            layers.append({"name": name, "type": "relu", "weights": _cell(), "leak": 0.0})
        else:
            layers.append(
                {
                    "name": name,
                    "type": "pool",
                    "weights": _cell(),
                    "method": "max",
                    "pool": np.array([2.0, 2.0]),
                    "stride": np.array([2.0, 2.0]),
                    "pad": np.array([0.0, 0.0, 0.0, 0.0]),
                }
            )
    normalize = np.array([1024.0, 1e-12, 1.0, 0.5])
    layers.append({"name": "preL2", "type": "normalize", "weights": _cell(), "param": normalize})
    assign = state["pool.conv.weight"].float().numpy()[:, :, 0, 0].T  # D×K
    neg_centroids = -state["pool.centroids"].float().numpy().T  # D×K
    layers.append(
        {
            "name": "vlad_core",
            "type": "custom",
            "weights": _cell(np.ascontiguousarray(assign), np.ascontiguousarray(neg_centroids)),
            "K": float(k),
        }
    )
    layers.append({"name": "intranorm", "type": "normalize", "weights": _cell(), "param": normalize})
    layers.append({"name": "postL2", "type": "custom", "weights": _cell()})
    if weights.whiten_dim:
        w = state["WPCA.0.weight"].float().numpy()[:, :, 0, 0]  # OUT × (k·D + d)
        out = w.shape[0]
        # to MATLAB order: input index d·K + k, laid out IN×OUT, then 1×1×IN×OUT
        w_mat = w.reshape(out, k, d).transpose(2, 1, 0).reshape(d * k, out)
        b = state["WPCA.0.bias"].float().numpy()
        layers.append(
            {
                "name": "WPCA",
                "type": "conv",
                "weights": _cell(w_mat[None, None], b[:, None]),
                "stride": np.array([1.0, 1.0]),
                "pad": 0.0,
            }
        )
        layers.append({"name": "finalL2", "type": "custom", "weights": _cell()})
    cells = np.empty((1, len(layers)), dtype=object)
    for i, layer in enumerate(layers):
        cells[0, i] = layer
    average = np.array(weights.average_rgb, dtype=np.float32).reshape(1, 1, 3)
    net = {
        "layers": cells,
        "meta": {"normalization": {"averageImage": average, "imageSize": np.array([224.0, 224.0, 3.0])}},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"net": net}, do_compression=False)
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def seed_hf_cache(
    cache_dir: Path,
    repo_id: str,
    files: dict[str, Path],
    commit: str = FAKE_COMMIT,
    ref: str = "main",
    move: bool = False,
) -> Path:
    """Lay files out as huggingface_hub's cache does: ``models--{owner}--{name}/blobs/<sha256>``,
    ``snapshots/<commit>/<file>`` (a relative symlink to the blob) and ``refs/<ref>``.

    Returns ``cache_dir`` (point HF_HUB_CACHE at it). ``move`` moves big files instead of
    copying (hard link when possible).
    """
    cache_dir = Path(cache_dir)
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    snap = repo / "snapshots" / commit
    for filename, src in files.items():
        src = Path(src)
        blob = repo / "blobs" / _sha256(src)
        if not blob.exists():
            try:
                os.link(src, blob)
            except OSError:
                (shutil.move if move else shutil.copyfile)(str(src), str(blob))
        target = snap / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            target.unlink()
        rel = os.path.relpath(blob, target.parent)
        try:
            target.symlink_to(rel)
        except OSError:  # filesystems without symlinks: huggingface_hub copies too
            shutil.copyfile(blob, target)
    (repo / "refs" / ref).write_text(commit)
    return cache_dir


def seed_patch_netvlad(cache_dir: Path, weights_by_dim: dict[int, NetVLADWeights], workdir: Path) -> Path:
    """Seed ``pitts_WPCA{N}.pth.tar`` for each given whitening size; returns the cache folder."""
    files = {}
    for dim, weights in weights_by_dim.items():
        files[f"pitts_WPCA{dim}.pth.tar"] = write_pth_tar(Path(workdir) / f"pitts_WPCA{dim}.pth.tar", weights)
    return seed_hf_cache(cache_dir, PATCH_NETVLAD_REPO, files)
