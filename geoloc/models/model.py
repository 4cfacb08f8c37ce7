"""`GeolocModel`: a backbone, a pooling layer and an optional whitening, with what it takes to
use them (preprocessing, identity, vocabulary) travelling along.

Everything a database or a fine-tuning run needs to know about a model is on this object, so
the rest of geoloc never branches on which network it is running.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geoloc.errors import ModelError
from geoloc.models.backbones import (
    ARCHS,
    OUT_CHANNELS,
    TRAIN_LAYERS,
    build_backbone,
    freeze_backbone,
)
from geoloc.models.netvlad import POOLINGS, NetVLAD, Whitening, build_pooling
from geoloc.models.preprocess import IMAGENET, LITE, Preprocess
from geoloc.models.weights import publish_file, sha256_file

FORMAT_VERSION = "1"
# Metadata keys that describe the architecture; a caller's metadata cannot override them.
_STRUCTURE_KEYS = ("geoloc_format", "arch", "pooling", "num_clusters", "whiten_dim", "preprocess", "vocabulary")


class GeolocModel(nn.Module):
    """images (B×3×H×W, normalised by ``preprocess``) → B×dim float32 unit-norm descriptors."""

    def __init__(
        self,
        backbone: nn.Module,
        pool: nn.Module,
        whiten: Whitening | None = None,
        *,
        arch: str,
        pooling: str,
        preprocess: Preprocess,
        name: str = "",
        weights_hash: str = "",
        needs_vocabulary: bool = False,
        train_layers: str = "last_block",
        base: str | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.pool = pool
        self.whiten = whiten
        self.arch = arch
        self.pooling = pooling
        self.preprocess = preprocess
        self.name = name
        self.weights_hash = weights_hash
        self.needs_vocabulary = needs_vocabulary
        self.train_layers = train_layers
        self.base = base
        self.eval()

    # -- shape ---------------------------------------------------------------------------------
    @property
    def local_dim(self) -> int:
        return OUT_CHANNELS[self.arch]

    @property
    def num_clusters(self) -> int | None:
        return self.pool.num_clusters if isinstance(self.pool, NetVLAD) else None

    @property
    def whiten_dim(self) -> int | None:
        return self.whiten.out_dim if self.whiten is not None else None

    @property
    def dim(self) -> int:
        return self.whiten.out_dim if self.whiten is not None else self.pool.out_dim

    # -- inference -----------------------------------------------------------------------------
    def local_features(self, images: torch.Tensor) -> torch.Tensor:
        """B×C×h×w: what the pooling layer sees (k-means for the vocabulary samples these)."""
        return self.backbone(images)

    def pool_features(self, features: torch.Tensor) -> torch.Tensor:
        """Local features → final descriptors (pooling, whitening, L2), for cached features."""
        if isinstance(self.pool, NetVLAD) and not self.has_vocabulary:
            raise ModelError(
                f"model {self.name or self.arch}: its NetVLAD vocabulary is not fitted yet "
                "(fit_vocabulary on the database photos, or load_vocabulary from the database)"
            )
        v = self.pool(features)
        if self.whiten is not None:
            v = self.whiten(v)
        return F.normalize(v.float(), p=2, dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool_features(self.local_features(images))

    # -- vocabulary (NetVLAD centroids fitted on the user's photos) ------------------------------
    @property
    def has_vocabulary(self) -> bool:
        """True when the pooling is ready: fitted NetVLAD centroids, or a pooling with none."""
        return bool(self.pool.fitted) if isinstance(self.pool, NetVLAD) else True

    def fit_vocabulary(self, features: torch.Tensor, iterations: int = 50, seed: int = 0) -> float:
        """k-means on N×C local features; sets centroids and assignment weights; returns α."""
        if not isinstance(self.pool, NetVLAD):
            raise ModelError(f"model {self.name or self.arch}: {self.pooling} pooling has no vocabulary to fit")
        if features.ndim != 2 or features.shape[1] != self.pool.dim:
            raise ModelError(f"vocabulary features must be N×{self.pool.dim}, got {tuple(features.shape)}")
        device = self.pool.centroids.device
        alpha = self.pool.fit(features.cpu(), iterations=iterations, seed=seed)
        self.pool.to(device)
        return alpha

    def vocabulary_state(self) -> dict[str, torch.Tensor]:
        if not isinstance(self.pool, NetVLAD):
            return {}
        if not self.has_vocabulary:
            raise ModelError(f"model {self.name or self.arch}: no vocabulary fitted yet")
        return {
            "centroids": self.pool.centroids.detach().float().cpu().contiguous().clone(),
            "conv.weight": self.pool.conv.weight.detach().float().cpu().contiguous().clone(),
        }

    @torch.no_grad()
    def load_vocabulary(self, state: dict[str, torch.Tensor]) -> None:
        if not isinstance(self.pool, NetVLAD):
            raise ModelError(f"model {self.name or self.arch}: {self.pooling} pooling takes no vocabulary")
        try:
            centroids, weight = state["centroids"], state["conv.weight"]
        except KeyError as exc:
            raise ModelError(f"vocabulary lacks {exc.args[0]!r}") from None
        if tuple(centroids.shape) != tuple(self.pool.centroids.shape) or tuple(weight.shape) != tuple(
            self.pool.conv.weight.shape
        ):
            raise ModelError(
                f"vocabulary shapes {tuple(centroids.shape)}/{tuple(weight.shape)} do not fit this model "
                f"({tuple(self.pool.centroids.shape)}/{tuple(self.pool.conv.weight.shape)})"
            )
        self.pool.centroids.copy_(centroids)
        self.pool.conv.weight.copy_(weight)
        self.pool.fitted.fill_(True)

    def vocabulary_hash(self) -> str:
        """sha256 of the vocabulary tensors: two databases match only if this matches too."""
        h = hashlib.sha256()
        for key, tensor in sorted(self.vocabulary_state().items()):
            h.update(key.encode())
            h.update(tensor.numpy().tobytes())
        return h.hexdigest()

    # -- training --------------------------------------------------------------------------------
    def set_train_layers(self, train_layers: str) -> None:
        """Freeze the backbone but for ``train_layers``; the pooling layer stays trainable.

        The PCA whitening stays frozen: it is a statistic of the descriptors, not something the
        triplet loss should learn (134M weights for the Pitts30k 4096-D layer, on a user's few
        hundred photos). Refit it after training instead (``geoloc finetune --pca``).
        """
        freeze_backbone(self.arch, self.backbone, train_layers)
        if self.whiten is not None:
            for p in self.whiten.parameters():
                p.requires_grad_(False)
        self.train_layers = train_layers

    def train(self, mode: bool = True) -> GeolocModel:
        # Frozen batch-norm layers must keep their ImageNet statistics while the rest trains.
        super().train(mode)
        if mode:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                    p.requires_grad for p in module.parameters()
                ):
                    module.eval()
        return self

    # -- description ------------------------------------------------------------------------------
    def config(self) -> dict[str, str]:
        """Metadata describing the architecture, as stored in a model file."""
        return {
            "geoloc_format": FORMAT_VERSION,
            "arch": self.arch,
            "pooling": self.pooling,
            "num_clusters": str(self.num_clusters or 0),
            "whiten_dim": str(self.whiten_dim or 0),
            "preprocess": self.preprocess.to_json(),
            "vocabulary": "fitted" if (isinstance(self.pool, NetVLAD) and self.has_vocabulary) else "none",
            "dim": str(self.dim),
            "train_layers": self.train_layers,
            "base": self.base or self.name or "",
        }

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}, arch={self.arch}, pooling={self.pooling}"


def default_preprocess(arch: str) -> Preprocess:
    return LITE if arch == "lite0" else IMAGENET


def build_model(
    arch: str,
    pooling: str = "netvlad",
    num_clusters: int = 64,
    whiten_dim: int | None = None,
    pretrained_backbone: bool = True,
    train_layers: str = "last_block",
    *,
    preprocess: Preprocess | None = None,
    name: str = "",
) -> GeolocModel:
    """A new model: ImageNet backbone (if ``pretrained_backbone``), unfitted pooling.

    NetVLAD models come back with ``needs_vocabulary`` set: fit the centroids (k-means on local
    features of real photos) before use. ``whiten_dim`` adds a PCA layer, to be fitted or trained.
    """
    if arch not in ARCHS:
        raise ModelError(f"unknown backbone {arch!r}; choose one of {', '.join(ARCHS)}")
    if pooling not in POOLINGS:
        raise ModelError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    if train_layers not in TRAIN_LAYERS:
        raise ModelError(f"unknown train_layers {train_layers!r}; choose one of {', '.join(TRAIN_LAYERS)}")
    local = OUT_CHANNELS[arch]
    backbone = build_backbone(arch, pretrained=pretrained_backbone)
    pool = build_pooling(pooling, local, num_clusters)
    whiten = Whitening(pool.out_dim, int(whiten_dim)) if whiten_dim else None
    model = GeolocModel(
        backbone,
        pool,
        whiten,
        arch=arch,
        pooling=pooling,
        preprocess=preprocess or default_preprocess(arch),
        name=name,
        needs_vocabulary=pooling == "netvlad",
        train_layers=train_layers,
    )
    model.set_train_layers(train_layers)
    return model


# ------------------------------------------------------------------------------------------------
# The one model-file format: safetensors + geoloc metadata
# ------------------------------------------------------------------------------------------------


def save_model_file(model: GeolocModel, path: Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as a geoloc model file (safetensors), atomically.

    ``metadata`` adds keys (``base``, ``description``, training settings…); values that are not
    strings are stored as JSON. The architecture keys always come from the model itself.
    """
    from safetensors.torch import save_file

    path = Path(path)
    meta: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        meta[str(key)] = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    config = model.config()
    meta.update({k: v for k, v in config.items() if k in _STRUCTURE_KEYS or k not in meta})
    tensors = {
        k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        publish_file(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_model_metadata(path: Path) -> dict[str, str]:
    """The metadata of a geoloc model file; ModelError when it is not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise ModelError(f"{path}: not a readable safetensors model file ({exc})") from None
    if meta.get("geoloc_format") != FORMAT_VERSION:
        found = meta.get("geoloc_format")
        why = "no geoloc metadata" if found is None else f"geoloc_format {found!r}, expected {FORMAT_VERSION!r}"
        raise ModelError(f"{path}: not a geoloc model file ({why})")
    return meta


def load_model_file(path: Path, *, name: str | None = None, weights_hash: str | None = None) -> GeolocModel:
    """Load a geoloc model file written by ``save_model_file`` (or converted from a checkpoint)."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_model_metadata(path)
    try:
        arch = meta["arch"]
        pooling = meta["pooling"]
        num_clusters = int(meta.get("num_clusters") or 64)
        whiten_dim = int(meta.get("whiten_dim") or 0) or None
        preprocess = Preprocess.from_json(meta["preprocess"]) if meta.get("preprocess") else default_preprocess(arch)
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelError(f"{path}: incomplete geoloc metadata ({exc})") from None
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise ModelError(f"{path}: cannot read the weights ({exc})") from None
    # Built on the meta device and filled by assignment: no time spent initialising a
    # 134-million-weight whitening layer that the file overwrites anyway.
    with torch.device("meta"):
        model = build_model(
            arch,
            pooling,
            num_clusters=num_clusters,
            whiten_dim=whiten_dim,
            pretrained_backbone=False,
            train_layers="none",
            preprocess=preprocess,
        )
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ModelError(
            f"{path}: weights do not fit a {arch}/{pooling} model "
            f"(missing {', '.join(missing[:3]) or 'none'}; unexpected {', '.join(unexpected[:3]) or 'none'})"
        )
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except Exception as exc:
        raise ModelError(f"{path}: weights do not fit a {arch}/{pooling} model ({exc})") from None
    fitted = meta.get("vocabulary") == "fitted"
    if isinstance(model.pool, NetVLAD):
        model.pool.fitted = torch.tensor(fitted)  # non-persistent buffer: not in the file
    model.set_train_layers(meta.get("train_layers") or "last_block")
    model.needs_vocabulary = isinstance(model.pool, NetVLAD) and not fitted
    model.name = name if name is not None else str(path)
    model.base = meta.get("base") or None
    model.weights_hash = weights_hash or file_sha256(path)
    return model.eval()


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file, remembered under geoloc's cache keyed by path, size and mtime, so a
    500 MB model is not re-hashed at every start."""
    from geoloc.paths import cache_dir

    path = Path(path).resolve()
    st = path.stat()
    key = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    memo = cache_dir() / "hashes" / (hashlib.sha1(str(path).encode()).hexdigest() + ".json")
    try:
        cached = json.loads(memo.read_text())
        if all(cached.get(k) == v for k, v in key.items()):
            return str(cached["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    digest = sha256_file(path, chunk)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(json.dumps({**key, "sha256": digest}))
    except OSError:
        pass  # an unwritable cache: just hash again next time
    return digest
